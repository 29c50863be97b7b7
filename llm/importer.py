"""An LLM's weights become a registry version: imported once, pinned, digest-checked, promoted as bytes.

    python -m llm.importer import --store ROOT --model NAME --source SOURCE [--revision REV]
                                  [--reason TEXT] [--champion] [--gpu-mib N --gpus N --utilization F
                                  --max-model-len N --max-num-seqs N --max-lora-rank N --max-loras N]
    python -m llm.importer promote --from ROOT --to ROOT --model NAME --version V --source S --revision R
    python -m llm.importer show --store ROOT --model NAME

SOURCE is a Hugging Face id (downloaded with ``huggingface_hub.snapshot_download`` at the commit that
``--revision`` resolves to) or a local folder (a snapshot already on disk: air-gapped imports, tests).
Only what vLLM loads is taken: ``*.safetensors``, the JSON configs, tokenizer files, chat templates;
never pickled weights (``*.bin``, ``*.pt``: loading one runs code) nor repository code (``*.py``,
``trust_remote_code``). The version lands in the same registry as the TF models
(training/registry.py: files first, ``MANIFEST.json`` with each file's SHA-256 last, written once;
aliases, audit, rejection) with one more file, ``llm-version.json``: source, revision, the resolved
commit, the model's shape (layers, KV heads, head dim, dtype, parameters, weight bytes: llm/fit.py)
and who imported it when. The pipeline adopts it as the ``candidate`` (ops/deliver.py: the import
Job may not move an alias); the canary (or ``--champion`` for a first version by hand) makes it the champion.

Importing the same source at the same commit again returns the existing version, found from the resolved
commit before any download (no second copy, no second download; its fit checked from its record).
Before anything is written, the fit check runs on the snapshot's own config.json when the target GPU
is given (the Job passes the pool's, and where the stack serves LoRA adapters of the model the rank and
count its vLLM sizes their buffers by), so a model that cannot fit fails here in one line, before any GPU
node starts. ``promote`` checks the version's recorded source and commit against the target stack's pin
first (``check_pin``), then copies the bytes (``registry.promote_between``, candidate only).
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import secrets
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from llm import fit
from training import registry, storage

META = "llm-version.json"
REQUIRED = ("config.json", META)
# What vLLM reads from a snapshot; everything else (pickles, code, images, docs) stays out.
ALLOW = ("*.safetensors", "*.safetensors.index.json", "config.json", "generation_config.json", "tokenizer*", "special_tokens_map.json")
ALLOW += ("vocab.json", "merges.txt", "*.model", "*.tiktoken", "chat_template.*", "preprocessor_config.json")
PICKLES = ("*.bin", "*.pt", "*.pth", "*.pkl", "*.ckpt")


class ImportRefused(registry.RegistryError):
    """The import or promotion was refused; nothing was written. One line."""


@dataclass(frozen=True)
class FitTarget:
    """The GPU one replica gets (the pool's smallest, components/config/capacity.py) and the serving settings."""

    gpu_mib: int
    gpus: int = 1
    utilization: float = 0.9
    max_model_len: int = 4096
    max_num_seqs: int | None = None
    # Where the stack serves LoRA adapters of the model: vLLM's --max-lora-rank and --max-loras (the
    # Job passes its pods' own, components/models/llm_service.py lora_limits); 0 adapters: no buffers.
    max_lora_rank: int = 0
    max_loras: int = 0

    def lora_bytes(self, config: dict) -> int:
        """The LoRA buffers per GPU vLLM preallocates for this target (llm/fit.py ``lora_buffer_bytes``)."""
        if not self.max_loras:
            return 0
        try:
            return fit.lora_buffer_bytes(config, self.max_lora_rank, self.max_loras, self.gpus)
        except KeyError as exc:
            raise ImportRefused(
                f"config.json has no {exc}: the LoRA buffers of {self.max_loras} adapters cannot be sized: nothing imported"
            ) from None


def is_local(source: str) -> bool:
    return source.startswith(("/", "./", "file://")) or Path(source).is_dir()


def _wanted(rel: str) -> bool:
    name = rel.rsplit("/", 1)[-1]
    return not rel.startswith(".") and any(fnmatch.fnmatch(name, p) for p in ALLOW)


def tree_digest(folder: Path) -> str:
    """A local snapshot's identity (no commit to resolve): SHA-256 over its wanted files' names and digests."""
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if p.is_file() and _wanted(rel):
            h.update(rel.encode() + b"\0" + hashlib.sha256(p.read_bytes()).hexdigest().encode() + b"\n")
    return "tree-" + h.hexdigest()


def resolve(source: str, revision: str | None) -> str:
    """The commit ``source`` is at ``revision`` now (a Hugging Face commit hash: one small API call; a
    local folder's ``tree_digest``), known before any weight is downloaded."""
    if is_local(source):
        return tree_digest(Path(source.removeprefix("file://")))
    from huggingface_hub import HfApi  # the import Job's image has it; prod never runs this

    return HfApi().model_info(source, revision=revision).sha  # a branch or tag -> the commit it is now


def snapshot(source: str, commit: str, dest: Path) -> None:
    """The wanted files of ``source`` at ``commit`` into ``dest``."""
    if is_local(source):
        src = Path(source.removeprefix("file://"))
        for p in sorted(src.rglob("*")):
            rel = p.relative_to(src).as_posix()
            if p.is_file() and _wanted(rel):
                (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(p, dest / rel)
        if tree_digest(src) != commit:
            raise ImportRefused(f"{source} changed while it was read: nothing imported")
        return
    from huggingface_hub import snapshot_download

    snapshot_download(source, revision=commit, local_dir=dest, allow_patterns=list(ALLOW))
    shutil.rmtree(dest / ".cache", ignore_errors=True)  # huggingface_hub's download bookkeeping, not the model


def check_snapshot(folder: Path, source: str) -> list[str]:
    """What makes ``folder`` unservable: no config.json, no safetensors weights (pickles refused)."""
    problems = []
    if not (folder / "config.json").is_file():
        problems.append("no config.json")
    if not any(folder.rglob("*.safetensors")):
        problems.append("no *.safetensors weights (pickled *.bin/*.pt weights are refused: loading them runs code)")
    if not any(folder.glob("tokenizer*")):
        problems.append("no tokenizer files")
    return [f"{source}: {p}" for p in problems]


def weights_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*.safetensors"))


def fit_problem(shape: fit.ModelShape, target: FitTarget, source: str, lora_bytes: int = 0) -> str | None:
    """``lora_bytes``: ``target.lora_bytes`` of the snapshot's config.json (the config-time check's sum,
    components/config/llm.py ``llm_fit_rules``)."""
    seqs = target.max_num_seqs or 1
    f = fit.check(shape, target.max_model_len, seqs, target.gpu_mib, target.utilization, target.gpus, lora_bytes)
    if f.fits:
        return None
    adapters = f", {target.max_loras} LoRA adapters of rank <= {target.max_lora_rank}" if lora_bytes else ""
    return (
        f"{source} does not fit {target.gpus} x {target.gpu_mib / 1024:.1f} GiB GPU(s) x {target.utilization:g}: {f.numbers()} "
        f"({target.max_model_len} tokens x {seqs} sequences{adapters}); at most {f.max_tokens} tokens fit"
    )


def record(root: str, name: str, version: str) -> dict:
    """The ``llm-version.json`` of a version (RegistryError when it has none: not an LLM version)."""
    try:
        return json.loads(storage.read_text(storage.join(registry.model_root(root, name), version, META)))
    except FileNotFoundError:
        raise registry.RegistryError(f"{name}/{version} in {root}: no {META}: not an imported LLM version") from None


def find(root: str, name: str, source: str, commit: str) -> str | None:
    """The complete version of ``source`` at ``commit`` already in the store, if any."""
    for v in registry.versions(root, name):
        try:
            r = record(root, name, v)
        except registry.RegistryError:
            continue
        if r.get("source") == source and r.get("commit") == commit:
            return v
    return None


def version_name(commit: str) -> str:
    # Registry names sort by time (training/registry.py); the commit's head says what it is; the random
    # part keeps the next import's name from being guessed (and its folder planted: issue 24 item 8).
    return f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{commit.removeprefix('tree-')[:12]}-{secrets.token_hex(6)}"


def import_weights(
    source: str,
    revision: str | None,
    root: str,
    name: str,
    *,
    reason: str,
    target: FitTarget | None = None,
    champion: bool = False,
    version: str | None = None,
) -> dict:
    """Import ``source`` at ``revision`` into ``root`` as model ``name``; returns its record (with ``version``
    and ``created``: False when that commit was already imported). Raises ImportRefused."""
    commit = resolve(source, revision)
    if existing := find(root, name, source, commit):
        # Already imported (an import Job re-run: new LoRA limits, a new image): checked against the target
        # from the version's own record and config.json, no download.
        rec = record(root, name, existing)
        config = json.loads(storage.read_text(storage.join(registry.model_root(root, name), existing, "config.json")))
        shape = fit.ModelShape.from_dict(rec["shape"])
        if target is not None and (problem := fit_problem(shape, target, source, target.lora_bytes(config))):
            raise ImportRefused(f"{problem} (version {existing}, already imported)")
        return {**rec, "version": existing, "created": False}
    with tempfile.TemporaryDirectory(prefix="llm-import-") as tmp:
        folder = Path(tmp)
        t0 = time.monotonic()
        snapshot(source, commit, folder)
        downloaded_s = time.monotonic() - t0
        if problems := check_snapshot(folder, source):
            raise ImportRefused("; ".join(problems) + ": nothing imported")
        config = json.loads((folder / "config.json").read_text())
        shape = fit.shape_of(config, weights_bytes(folder))
        if target is not None and (problem := fit_problem(shape, target, source, target.lora_bytes(config))):
            raise ImportRefused(f"{problem}: nothing imported")
        version = version or version_name(commit)
        meta = {
            "source": source,
            "revision": revision,
            "commit": commit,
            "shape": shape.to_dict(),
            "imported_at": time.time(),
            "imported_by": registry.actor(),
            "download_seconds": round(downloaded_s, 3),
        }
        (folder / META).write_text(json.dumps(meta, indent=2, sort_keys=True))
        # The import Job (no --champion: every stack that serves an LLM has canaries) adds the version
        # only; its role may not move an alias and the pipeline adopts it (issue 24 item 8). --champion
        # (a person's first version by hand) adopts it at once.
        registry.publish(folder, root, name, version, reason=reason, champion=champion, required=REQUIRED, adopt=champion)
    return {**meta, "version": version, "created": True}


def check_pin(root: str, name: str, version: str, source: str, revision: str | None) -> dict:
    """The version was imported from ``source`` at the pinned ``revision`` (its commit, or the branch/tag
    it was imported as); else ImportRefused naming both. Returns its record."""
    r = record(root, name, version)
    if r.get("source") != source:
        raise ImportRefused(f"{name}/{version} was imported from {r.get('source')!r}, the stack serves {source!r}: refused")
    if revision is not None and revision not in (r.get("commit"), r.get("revision")):
        raise ImportRefused(
            f"{name}/{version} is {source} at commit {r.get('commit')} (imported as {r.get('revision')!r}); the stack pins {revision!r}: refused"
        )
    return r


def promote(src: str, dst: str, name: str, version: str, *, source: str, revision: str | None, reason: str) -> dict:
    """Copy ``version`` to the next stack's store as its candidate, if it is what that stack pins."""
    check_pin(src, name, version, source, revision)
    return registry.promote_between(src, dst, name, version, reason=reason, champion=False)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m llm.importer", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    i = sub.add_parser("import", help="import SOURCE at REVISION as a new version (or find the one already imported)")
    i.add_argument("--store", required=True)
    i.add_argument("--model", required=True)
    i.add_argument("--source", required=True)
    i.add_argument("--revision")
    i.add_argument("--reason", default="import")
    i.add_argument("--champion", action="store_true", help="also make it the champion (the first version of a model)")
    i.add_argument("--gpu-mib", type=int, help="memory of one GPU of the pool: run the fit check before importing")
    i.add_argument("--gpus", type=int, default=1)
    i.add_argument("--utilization", type=float, default=0.9)
    i.add_argument("--max-model-len", type=int, default=4096)
    i.add_argument("--max-num-seqs", type=int)
    i.add_argument("--max-lora-rank", type=int, default=0, help="vLLM's --max-lora-rank where adapters are served (fit check)")
    i.add_argument("--max-loras", type=int, default=0, help="vLLM's --max-loras: the adapters served on the model (fit check)")
    pr = sub.add_parser("promote", help="copy a version to another store as its candidate, checked against that stack's pin")
    pr.add_argument("--from", dest="src", required=True)
    pr.add_argument("--to", dest="dst", required=True)
    pr.add_argument("--model", required=True)
    pr.add_argument("--version", required=True)
    pr.add_argument("--source", required=True)
    pr.add_argument("--revision")
    pr.add_argument("--reason", default="promotion")
    s = sub.add_parser("show", help="the imported versions of a model with their source and commit")
    s.add_argument("--store", required=True)
    s.add_argument("--model", required=True)
    return p


def main(argv: list[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    try:
        if a.cmd == "import":
            target = None
            if a.gpu_mib:
                target = FitTarget(a.gpu_mib, a.gpus, a.utilization, a.max_model_len, a.max_num_seqs, a.max_lora_rank, a.max_loras)
            out = import_weights(a.source, a.revision, a.store, a.model, reason=a.reason, target=target, champion=a.champion)
        elif a.cmd == "promote":
            out = promote(a.src, a.dst, a.model, a.version, source=a.source, revision=a.revision, reason=a.reason)
        else:
            out = {v: record(a.store, a.model, v) for v in registry.versions(a.store, a.model)}
    except (registry.RegistryError, storage.BadURI) as exc:
        # Refused (not servable, does not fit, pin, rejected): the same on every retry (the Job fails at once).
        print(f"llm import: REFUSED: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(out, indent=2, sort_keys=True, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
