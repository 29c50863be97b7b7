"""Offline preview diff between two synth outputs, as Markdown for a PR comment:

    python -m tools.preview_diff BASE_DIR HEAD_DIR > diff.md
    python -m tools.preview_diff --stack dev [--base-ref origin/main]   (make preview-diff, mlp preview-diff)

The second form synths BASE_REF (a git worktree in build/base-src, removed after) and the work tree,
writes the diff to build/preview.md and prints it; a stack missing at BASE_REF diffs against nothing.

Resources added / removed / changed by URN, field by field; changes that make Pulumi replace the
resource are flagged (a new Job name is a new training run). A resource whose new URN carries an
alias of an old one is the same resource renamed (Pulumi keeps its state), not a delete and a create. Secrets are "[secret]" in synth output
already and are never printed: a changed secret shows as "changed (secret)". Needs no cloud
credentials, so it works for PRs from forks.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

# Fields whose change replaces the resource (create-before-delete or delete-then-create).
REPLACE_FIELDS: dict[str, tuple[str, ...]] = {
    "kubernetes:": ("metadata.name", "metadata.namespace"),
    "kubernetes:batch/v1:Job": ("spec.template", "spec.selector"),
    "kubernetes:apps/v1:Deployment": ("spec.selector",),
    "kubernetes:core/v1:PersistentVolumeClaim": ("spec.storageClassName", "spec.accessModes"),
    "aws:eks/nodeGroup:NodeGroup": ("nodeGroupName", "instanceTypes", "amiType", "capacityType", "diskSize", "subnetIds", "clusterName"),
    "aws:ecr/repository:Repository": ("name",),
    "aws:s3/bucket:Bucket": ("bucket",),
    "eks:index:Cluster": ("name", "vpcId", "privateSubnetIds"),
    "awsx:ec2:Vpc": ("cidrBlock", "numberOfAvailabilityZones"),
}
MAX_VALUE = 120


def load(synth_dir: Path) -> dict[str, dict[str, Any]]:
    return {r["urn"]: r for r in json.loads((synth_dir / "resources.json").read_text())}


def flatten(value: Any, path: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(flatten(v, f"{path}.{k}" if path else str(k)))
        return out
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        out = {}
        for i, v in enumerate(value):
            out.update(flatten(v, f"{path}[{i}]"))
        return out
    return {path: value}


def changes(base: dict, head: dict) -> list[tuple[str, Any, Any]]:
    a, b = flatten(base.get("inputs", {})), flatten(head.get("inputs", {}))
    return [(k, a.get(k), b.get(k)) for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)]


def replaces(type_: str, path: str) -> bool:
    for prefix, fields in REPLACE_FIELDS.items():
        if type_ == prefix or (prefix.endswith(":") and type_.startswith(prefix)):
            if any(path == f or path.startswith(f + ".") or path.startswith(f + "[") for f in fields):
                return True
    return False


def show(value: Any) -> str:
    if value == "[secret]":
        return "(secret)"
    text = json.dumps(value, sort_keys=True) if not isinstance(value, str) else value
    text = text.replace("|", "\\|").replace("\n", "\\n")
    return f"`{text[:MAX_VALUE]}{'...' if len(text) > MAX_VALUE else ''}`" if value is not None else "_(unset)_"


def short(urn: str) -> str:
    """type::name part of a URN (the stack/project prefix is the same everywhere)."""
    return "::".join(urn.split("::")[2:])


def renames(base: dict[str, dict], head: dict[str, dict]) -> dict[str, str]:
    """new URN -> old URN, for head resources that are a base resource under an alias."""
    out = {}
    for u, r in head.items():
        if u not in base:
            old = next((a for a in r.get("aliases") or [] if a in base and a not in head), None)
            if old:
                out[u] = old
    return out


def render(base: dict[str, dict], head: dict[str, dict]) -> str:
    renamed = renames(base, head)
    base = {**{k: v for k, v in base.items() if k not in renamed.values()}, **{new: base[old] for new, old in renamed.items()}}
    added = sorted(head.keys() - base.keys())
    removed = sorted(base.keys() - head.keys())
    changed = {u: changes(base[u], head[u]) for u in sorted(base.keys() & head.keys())}
    changed = {u: c for u, c in changed.items() if c or u in renamed}
    replaced = {u for u, c in changed.items() if any(replaces(head[u]["type"], p) for p, _, _ in c)}
    lines = [
        "### Preview (offline synth)",
        "",
        f"**{len(added)} to add, {len(changed) - len(replaced)} to update, {len(replaced)} to replace, {len(removed)} to delete** "
        f"({len(head)} resources after this change" + (f"; {len(renamed)} renamed with an alias, state kept" if renamed else "") + ")",
    ]
    if not (added or removed or changed):
        lines += ["", "No changes."]
        return "\n".join(lines) + "\n"
    notes = _notes(base, head, changed)
    if notes:
        lines += ["", *[f"> {n}" for n in notes]]
    if added:
        lines += ["", "#### Added", *[f"- `+` `{short(u)}`" for u in added]]
    if removed:
        lines += ["", "#### Deleted", *[f"- `-` `{short(u)}`" for u in removed]]
    for u, cs in changed.items():
        mark = "**replace**" if u in replaced else "update"
        lines += ["", f"#### `~` `{short(u)}` ({mark})"]
        if u in renamed:
            lines += ["", f"Renamed from `{short(renamed[u])}` (alias: same resource)." + ("" if cs else " No other change.")]
        if not cs:
            continue
        lines += ["", "| field | before | after |", "|---|---|---|"]
        for path, old, new in cs:
            flag = " (forces replacement)" if replaces(head[u]["type"], path) else ""
            if old == "[secret]" or new == "[secret]":
                lines.append(f"| `{path}`{flag} | (secret) | (secret) |")
            else:
                lines.append(f"| `{path}`{flag} | {show(old)} | {show(new)} |")
    return "\n".join(lines) + "\n"


def _notes(base: dict, head: dict, changed: dict) -> list[str]:
    notes = []
    for u, cs in changed.items():
        t = head[u]["type"]
        for path, old, new in cs:
            if t == "kubernetes:batch/v1:Job" and path == "metadata.name":
                notes.append(f"A new training run starts: Job `{old}` is replaced by `{new}`.")
            if t == "kubernetes:apps/v1:Deployment" and path == "metadata.name":
                notes.append(
                    f"Deployment `{old}` is replaced by `{new}`: the new one is created and ready before the old one is"
                    " deleted (Pulumi replaces create-before-delete), so the model keeps serving."
                )
            if t == "kubernetes:apps/v1:Deployment" and path.endswith(".image"):
                notes.append(f"The model service rolls out a new image: {show(new)}.")
            # The served version is pinned on the model's pod template (components/lib/rollout_specs.py VERSION_ANNOTATION).
            if path.endswith(".annotations.mlplatform.io/model-version"):
                labels = ((head[u].get("inputs") or {}).get("metadata") or {}).get("labels") or {}
                model = labels.get("mlplatform.io/model", head[u].get("name", "?"))
                how = "a canary rollout, analysed against the stable pods" if t.endswith(":Rollout") else "a rolling update"
                notes.append(f"model {model}: {old} → {new} ({how}).")
            if t == "aws:eks/nodeGroup:NodeGroup" and path == "scalingConfig.maxSize":
                notes.append(f"GPU/system pool `{head[u]['name']}` max size {old} -> {new}.")
    return notes


ROOT = Path(__file__).resolve().parent.parent


def _synth(cwd: Path, stack: str, out: Path) -> int:
    return subprocess.call([sys.executable, "-m", "tools.synth", "--stack", stack, "--out", str(out)], cwd=cwd)


def offline(stack: str, base_ref: str, build: Path = ROOT / "build") -> int:
    """Synth ``base_ref`` and the work tree for ``stack``; write and print the Markdown diff."""
    base_src, base_out, head_out = build / "base-src", build / "synth-base" / stack, build / "synth-head" / stack
    shutil.rmtree(base_src, ignore_errors=True)
    if subprocess.call(["git", "worktree", "add", "--force", "--detach", str(base_src), base_ref], cwd=ROOT):
        print(f"preview-diff: cannot check out {base_ref} (fetch it first, or pass --base-ref)", file=sys.stderr)
        return 2
    try:
        if _synth(base_src, stack, base_out):  # the stack may not exist at the base: everything is new
            base_out.mkdir(parents=True, exist_ok=True)
    finally:
        subprocess.call(["git", "worktree", "remove", "--force", str(base_src)], cwd=ROOT)
    if not (base_out / "resources.json").exists():
        (base_out / "resources.json").write_text("[]\n")
    if rc := _synth(ROOT, stack, head_out):
        return rc
    text = render(load(base_out), load(head_out))
    (build / "preview.md").write_text(text)
    sys.stdout.write(text)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--stack"] and len(argv) in (2, 4) and (len(argv) == 2 or argv[2] == "--base-ref"):
        return offline(argv[1], argv[3] if len(argv) == 4 else "origin/main")
    if len(argv) != 2 or argv[0] in ("-h", "--help"):
        print(__doc__, file=sys.stderr)
        return 2
    base_dir, head_dir = Path(argv[0]), Path(argv[1])
    for d in (base_dir, head_dir):
        if not (d / "resources.json").exists():
            print(f"{d}: no resources.json (make it with: python -m tools.synth --stack NAME --out {d})", file=sys.stderr)
            return 2
    sys.stdout.write(render(load(base_dir), load(head_dir)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
