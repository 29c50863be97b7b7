"""Wait for training Jobs and report how each ended:  python -m ops.train_wait JOB... [--namespace ml-training]
(or ``--models "$(pulumi stack output models --json)"``: every model's run that trains on this stack)

Exit 0 when the Job succeeded (a model was published), 3 when the quality gate failed (the training
container exited 3: nothing published), 1 for any other failure, with the last log lines. Uses kubectl
with the current context (the pipeline's agent service account may only read training Jobs and pods).

A run publishes a version only: its role may not move an alias (issue 24 item 8). The next step,
``make deliver`` (ops/deliver.py), adopts it with the deploy identity (``registry.adopt``: the newest
version newer than the champion whose gate passed, not rejected) together with any a scheduled run
published meanwhile, then canaries it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

GATE_EXIT_CODE = 3


def kubectl(*args: str) -> str:
    return subprocess.run(["kubectl", *args], capture_output=True, text=True, check=True).stdout


def outcome(job: dict) -> str | None:
    """'succeeded', 'failed' or None (still running), from the Job's conditions."""
    for c in job.get("status", {}).get("conditions") or []:
        if c.get("status") == "True" and c.get("type") == "Complete":
            return "succeeded"
        if c.get("status") == "True" and c.get("type") == "Failed":
            return "failed"
    return None


def gate_failed(pods: dict) -> bool:
    for pod in pods.get("items", []):
        for cs in pod.get("status", {}).get("containerStatuses") or []:
            if (cs.get("state", {}).get("terminated") or {}).get("exitCode") == GATE_EXIT_CODE:
                return True
    return False


def wait(job: str, namespace: str, timeout_s: float, poll_s: float = 10) -> int:
    deadline = time.time() + timeout_s
    while True:
        state = outcome(json.loads(kubectl("-n", namespace, "get", "job", job, "-o", "json")))
        if state == "succeeded":
            print(f"training job {job} succeeded: version published (make deliver adopts it)")
            return 0
        if state == "failed":
            pods = json.loads(kubectl("-n", namespace, "get", "pods", "-l", f"batch.kubernetes.io/job-name={job}", "-o", "json"))
            logs = kubectl("-n", namespace, "logs", f"job/{job}", "--tail", "30")
            print(logs)
            if gate_failed(pods):
                print(f"training job {job}: quality gate failed, nothing published", file=sys.stderr)
                return GATE_EXIT_CODE
            print(f"training job {job} failed", file=sys.stderr)
            return 1
        if time.time() > deadline:
            print(f"training job {job} still running after {timeout_s:.0f}s", file=sys.stderr)
            return 1
        time.sleep(poll_s)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ops.train_wait", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("jobs", nargs="*", metavar="job")
    p.add_argument("--models", help="the stack's `models` output (JSON): waits for each model's trainingJob")
    p.add_argument("--namespace", default="ml-training")
    p.add_argument("--timeout", type=float, default=7200, help="per Job (a run may first wait in the Kueue queue)")
    p.add_argument("--poll", type=float, default=10)
    args = p.parse_args(argv)
    jobs = list(args.jobs)
    if args.models:
        try:
            jobs += [m["trainingJob"] for m in json.loads(args.models).values() if m.get("trainingJob")]
        except (ValueError, AttributeError, TypeError) as exc:
            print(f"--models is not the stack's models output (JSON object of models): {exc}", file=sys.stderr)
            return 2
    if not jobs:
        print("no training Job on this stack (every model is received from another stack): nothing to wait for")
        return 0
    try:
        # Every run must pass: the worst outcome wins (a failed gate, 3, over any other failure, 1).
        codes = [wait(job, args.namespace, args.timeout, args.poll) for job in jobs]
        return GATE_EXIT_CODE if GATE_EXIT_CODE in codes else max(codes)
    except FileNotFoundError:
        print("kubectl not found on PATH", file=sys.stderr)
        return 2
    except subprocess.CalledProcessError as exc:
        print(f"kubectl failed: {exc.stderr.strip()}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
