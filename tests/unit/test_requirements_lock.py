"""Supply chain of the credentialed CI jobs (issue 24, low): the program environment they install is
hash-locked (requirements.lock, installed with ``pip --require-hashes``), names requirements.txt's pins
exactly, and every job that holds a cloud credential or a forge token installs it, not the unhashed
developer environment (``make venv``)."""

from __future__ import annotations

import re

import yaml

from tests.conftest import ROOT
from tests.unit.test_pipeline import gitlab_ci

PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==([^\s;\\]+)")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins(path: str) -> dict[str, str]:
    """``name -> version`` of every ``name==version`` line of a requirements file (comments dropped)."""
    pins = {}
    for line in (ROOT / path).read_text().splitlines():
        m = PIN.match(line.split("#", 1)[0].strip())
        if m:
            pins[_norm(m[1])] = m[3]
    return pins


def _lock_entries() -> dict[str, tuple[str, list[str]]]:
    """``name -> (version, hashes)`` of requirements.lock (continuation lines joined)."""
    text = re.sub(r"\\\n\s*", " ", (ROOT / "requirements.lock").read_text())
    entries = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", "--index-url")):
            continue
        m = PIN.match(line)
        assert m, f"requirements.lock: not an exact pin: {line[:80]}"
        entries[_norm(m[1])] = (m[3], re.findall(r"--hash=sha256:([0-9a-f]+)", line))
    return entries


def test_the_lock_pins_requirements_txt_exactly():
    wanted, locked = _pins("requirements.txt"), _lock_entries()
    assert wanted and set(wanted) <= set(locked), sorted(set(wanted) - set(locked))
    assert {n: locked[n][0] for n in wanted} == wanted  # same versions as requirements.txt
    # the transitive ones are pinned too (the resolver's, not whatever PyPI serves on the day)
    assert len(locked) > len(wanted)


def test_every_locked_requirement_carries_its_hashes():
    for name, (version, hashes) in _lock_entries().items():
        assert hashes, f"{name}=={version} has no --hash"
        assert all(len(h) == 64 for h in hashes), name
    text = (ROOT / "requirements.lock").read_text()
    # nothing that bypasses the hashes: no editable or URL requirement, no other index or host
    assert not re.search(r"^\s*(-e|--editable|--extra-index-url|--trusted-host|--find-links|-f)\b", text, re.M)
    assert "://" not in text.replace("--index-url https://pypi.org/simple", "")


def _recipe(target: str) -> list[str]:
    lines = (ROOT / "Makefile").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"{target}:")) + 1
    end = next(i for i in range(start, len(lines)) if not lines[i].startswith("\t"))
    return [line.strip() for line in lines[start:end]]


def test_venv_lock_installs_only_hashed_wheels():
    recipe = "\n".join(_recipe("venv-lock"))
    assert "pip install" in recipe and "--require-hashes" in recipe and "-r requirements.lock" in recipe
    assert "--only-binary=:all:" in recipe  # no sdist build fetching unpinned build tools
    assert "--upgrade" not in recipe and "-e ." not in recipe and "requirements-dev" not in recipe
    # it stands for `venv`, so the targets after it (ephemeral-up, up-ci, ...) install nothing more
    assert "touch $(VENV)/.installed" in recipe


# ---- every credentialed step installs the locked environment ----


def _groovy_stage(text: str, name: str) -> str:
    start = text.index(f"stage('{name}')")
    nxt = text.find("stage('", start + 1)
    return text[start : nxt if nxt > 0 else len(text)]


def _installs(text: str) -> list[str]:
    return re.findall(r"make (venv[a-z-]*)", text)


def test_jenkins_credentialed_stages_install_the_lock():
    credentialed = {
        "ci/deploy.Jenkinsfile": ["Deploy dev", "Deploy staging"],
        "ci/ephemeral.Jenkinsfile": ["Ephemeral stack"],
        "ci/reap.Jenkinsfile": ["Reap expired ephemeral stacks"],
        "Jenkinsfile": ["PR comment"],
    }
    for path, stages in credentialed.items():
        text = (ROOT / path).read_text()
        for stage in stages:
            body = _groovy_stage(text, stage)
            assert _installs(body) and _installs(body)[0] == "venv-lock", (path, stage)
            assert "venv" not in _installs(body), (path, stage)
            # installed before the first credential is bound
            bind = min(i for i in (body.find("withCredentials("), body.find("deployTo("), body.find("ephemeralCredentials")) if i >= 0)
            assert body.index("make venv-lock") < bind, (path, stage)


def test_gitlab_credentialed_jobs_install_the_lock():
    doc = gitlab_ci()
    jobs = {k: v for k, v in doc.items() if isinstance(v, dict) and "script" in v}
    tokens = {k for k, v in jobs.items() if "id_tokens" in v or "TOKEN" in "\n".join(map(str, v["script"]))}
    credentialed = {k for k in tokens if not k.startswith(".")} | {".deploy"}  # deploy:<env> run .deploy's script
    assert {"ephemeral:up", "ephemeral:destroy", ".deploy", "preview:comment"} <= credentialed
    for name in credentialed:
        script = "\n".join(map(str, jobs[name]["script"]))
        assert _installs(script) and set(_installs(script)) <= {"venv-lock", "venv-ml"}, (name, _installs(script))


def test_github_credentialed_jobs_install_the_lock():
    for path in sorted((ROOT / ".github" / "workflows").glob("*.yml")):
        for job_name, job in yaml.safe_load(path.read_text())["jobs"].items():
            dumped = yaml.safe_dump(job)
            credentialed = "secrets." in dumped or "github.token" in dumped or (job.get("permissions") or {}).get("id-token") == "write"
            installs = _installs(" ".join(str(s.get("run", "")) for s in job.get("steps", [])))
            if credentialed and installs:
                assert installs[0] == "venv-lock" and "venv" not in installs, (path.name, job_name, installs)
