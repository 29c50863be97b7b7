"""The model registry for people and the pipeline (training/registry.py does the work).

    python -m ops.models --store s3://bucket list
    python -m ops.models --store s3://bucket show --model mnist [VERSION|ALIAS]
    python -m ops.models --store s3://bucket promote --model mnist VERSION [--alias candidate] --reason "..."
    python -m ops.models promote --from s3://staging --to s3://prod --model mnist [VERSION] --reason "..."
    python -m ops.models --store s3://bucket rollback --model mnist [--to VERSION] --reason "..."
    python -m ops.models --store s3://bucket reject --model mnist VERSION --reason "..."
    python -m ops.models --store s3://bucket verify --model mnist [VERSION|ALIAS|--all]
    python -m ops.models --store s3://bucket adopt --model mnist [--champion] --reason "..."

STORE is a path, file:// or s3:// root (a local store works for every command). --store defaults to
$MLPLATFORM_STORE (then the older $MLPLATFORM_MODEL_STORE); `mlp models --stack NAME` uses the stack's
`modelStore` output. Who moved an alias is $MLPLATFORM_ACTOR, else the user. Times are UTC, ISO 8601.

Rejections are final: a rejected version never becomes champion or candidate again and is never
promoted to another store. `list` marks it (tag "rejected", last column: when, by whom, why) and
`show` prints its record. `rollback` rejects the version it leaves, moves the candidate off it, and
by default goes to the latest earlier champion that is not rejected (a second rollback goes further
back). `reject` of the champion rolls it back that way, or refuses when there is nothing to go back to.

`adopt` is what the pipeline does after the training runs (ops/deliver.py, with the deploy identity;
issue 24 item 8): training Jobs and CronJobs publish versions only, and may not move an alias. The
newest version newer than the champion whose gate passed on record, not rejected, its files intact,
becomes the candidate (`--champion`: and the champion, LATEST following: a store no canary judges).

Exit codes: 0 done; 1 refused or failed (one line on stderr), e.g. a rejected version, or no version
to roll back to; 2 usage; 3 conflict (someone else moved the alias first: nothing changed, look and
retry); 4 verification failed (a file differs from its manifest, or the manifest names a file outside
its version).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from training import registry, storage

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_CONFLICT, EXIT_VERIFY = 0, 1, 2, 3, 4


def _resolve(root: str, model: str, ref: str | None) -> str:
    """A version name, or an alias name resolved to its version (default: the champion)."""
    ref = ref or "champion"
    if ref in registry.ALIASES:
        doc = registry.get_alias(root, model, ref)
        if doc is None:
            raise registry.RegistryError(f"{model}: alias {ref} is not set in {root}")
        return doc["version"]
    return ref


def _figure(store: str, model: str, version: str) -> str:
    """The version's gate metric as ``name=value`` (from its metadata.json), or "-"."""
    try:
        meta = json.loads(storage.read_text(storage.join(registry.model_root(store, model), version, "metadata.json")))
    except (FileNotFoundError, ValueError):
        meta = {}
    metric = meta.get("gate", {}).get("metric") or "test_accuracy"
    value = meta.get("metrics", {}).get(metric)
    return f"{metric}={value:.4f}" if isinstance(value, int | float) else "-"


LIST_HEADER = ("MODEL", "VERSION", "TAGS", "GATE", "CREATED", "BY", "REJECTED")


def cmd_list(args) -> int:
    """One tab-separated row per version, under a header (--no-header for scripts): model, version, tags
    (aliases, LATEST, rejected), gate figure, created at, created by, and ``rejected: REASON, by WHO at
    WHEN`` or "-"."""
    models = [args.model] if args.model else sorted({n.split("/", 1)[0] for n in storage.list_names(storage.join(args.store, "models"))})
    if not models:  # a mistyped path is an empty store: say so rather than print a bare header
        raise registry.RegistryError(f"no models in {args.store} (nothing under models/): is that the store?")
    if not args.no_header:
        print("\t".join(LIST_HEADER))
    for model in models:
        by_version: dict[str, list[str]] = {}
        for alias, doc in registry.aliases(args.store, model).items():
            by_version.setdefault(doc["version"], []).append(alias)
        latest = registry.latest(args.store, model)
        rejected = registry.rejections(args.store, model)
        for version in registry.versions(args.store, model):
            manifest = registry.read_manifest(args.store, model, version)
            tags = sorted(by_version.get(version, [])) + (["LATEST"] if version == latest else [])
            tags += ["rejected"] if version in rejected else []
            why = f"rejected: {registry.describe_rejection(rejected[version])}" if version in rejected else "-"
            created = f"{registry.when(manifest.get('created_at'))}\t{manifest.get('created_by', '-')}"
            print(f"{model}\t{version}\t{','.join(tags) or '-'}\t{_figure(args.store, model, version)}\t{created}\t{why}")
    return EXIT_OK


TIME_KEYS = ("at", "created_at")


def iso_times(doc):
    """``doc`` with every record time (epoch seconds under "at"/"created_at") as UTC ISO 8601."""
    if isinstance(doc, dict):
        return {k: registry.when(v) if k in TIME_KEYS and isinstance(v, int | float) else iso_times(v) for k, v in doc.items()}
    if isinstance(doc, list):
        return [iso_times(v) for v in doc]
    return doc


def cmd_show(args) -> int:
    version = _resolve(args.store, args.model, args.ref)
    manifest = registry.read_manifest(args.store, args.model, version)
    try:
        meta = json.loads(storage.read_text(storage.join(registry.model_root(args.store, args.model), version, "metadata.json")))
    except FileNotFoundError:
        meta = None
    out = {
        "model": args.model,
        "version": version,
        "aliases": sorted(a for a, d in registry.aliases(args.store, args.model).items() if d["version"] == version),
        "latest": registry.latest(args.store, args.model),
        "manifest": manifest,
        "metrics": (meta or {}).get("metrics"),
        "gate": (meta or {}).get("gate"),
        "rejected": registry.rejection(args.store, args.model, version),
        "history": [r for r in registry.history(args.store, args.model) if version in (r["version"], r["from"])],
    }
    print(json.dumps(iso_times(out), indent=2, sort_keys=True))
    return EXIT_OK


def cmd_promote(args) -> int:
    if args.source or args.target:
        if not (args.source and args.target):
            raise registry.RegistryError("promotion between stores needs both --from and --to")
        if args.alias != "champion":
            raise registry.RegistryError("promotion between stores moves the target's candidate and champion: drop --alias")
        doc = registry.promote_between(args.source, args.target, args.model, args.version, reason=args.reason, champion=not args.candidate)
        role = "candidate" if args.candidate else "champion"
        print(f"{args.model}: {doc['version']} copied to {args.target} (digests verified) and is its {role} (was {doc['from'] or 'unset'})")
        return EXIT_OK
    if not args.store:
        raise registry.RegistryError("no store: pass --store or set MLPLATFORM_STORE")
    if not args.version:
        raise registry.RegistryError("name the version to promote")
    # forward only: going back is a rollback, which says so in the audit log
    doc = registry.move(args.store, args.model, args.alias, args.version, reason=args.reason, forward_only=True)
    print(f"{args.model}:{args.alias} -> {doc['version']} (was {doc['from'] or 'unset'}, generation {doc['generation']})")
    return EXIT_OK


def cmd_reject(args) -> int:
    before = registry.get_alias(args.store, args.model, "champion")
    doc = registry.reject(args.store, args.model, args.version, reason=args.reason)
    champ = registry.get_alias(args.store, args.model, "champion")
    if before and before["version"] == doc["version"]:
        print(
            f"{args.model}/{doc['version']} rejected ({doc['reason']}); it was the champion: rolled back to {champ['version']} (LATEST follows)"
        )
    else:
        print(f"{args.model}/{doc['version']} rejected ({doc['reason']}); champion stays {champ['version'] if champ else 'unset'}")
    return EXIT_OK


def adapter_rollback_target(store: str, model: str, to: str | None) -> str | None:
    """For a LoRA adapter (its champion has a lora-adapter.json), where a rollback may go: only to a
    version trained on the base version its base's champion names (what the base's pods serve: they
    refuse any other); by default the latest earlier such champion, not rejected. Any other model: ``to``."""
    from llm import lora_gate

    champ = registry.get_alias(store, model, "champion")
    try:
        base = (lora_gate.adapter_record(store, model, champ["version"]).get("base") or {}).get("model") if champ else None
    except registry.RegistryError:
        return to  # not an adapter
    served = registry.get_alias(store, base, "champion") if base else None
    if served is None:
        return to

    def on_base(v: str) -> bool:
        return (lora_gate.adapter_record(store, model, v).get("base") or {}).get("version") == served["version"]

    if to is not None:
        if not on_base(to):
            raise registry.RegistryError(
                f"{model}/{to} was not trained on {base}/{served['version']}, the {base} served: its pods would refuse it; nothing changed"
            )
        return to
    rejected = registry.rejections(store, model)
    for v in reversed(registry.champions(store, model)):
        if v != champ["version"] and v not in rejected and on_base(v):
            return v
    raise registry.RegistryError(
        f"{model}: no earlier champion trained on {base}/{served['version']}, the {base} served: nothing to roll back to; "
        f"take it off instead (serving.version: champion in the stack file); nothing changed"
    )


def cmd_rollback(args) -> int:
    to = adapter_rollback_target(args.store, args.model, args.to)
    doc = registry.rollback(args.store, args.model, to, reason=args.reason)
    print(
        f"{args.model}:champion rolled back {doc['from']} -> {doc['version']} (LATEST follows); {doc['from']} rejected, never delivered again"
    )
    return EXIT_OK


def cmd_verify(args) -> int:
    targets = registry.versions(args.store, args.model) if args.all else [_resolve(args.store, args.model, args.ref)]
    failed = []
    for version in targets:
        try:
            registry.verify(args.store, args.model, version)
            print(f"{args.model}/{version}: ok ({len(registry.read_manifest(args.store, args.model, version)['files'])} files)")
        except registry.VerifyError as exc:
            failed.append(version)
            for problem in exc.problems:
                print(f"{args.model}/{version}: {problem}", file=sys.stderr)
    champ = registry.get_alias(args.store, args.model, "champion")
    if champ and registry.latest(args.store, args.model) != champ["version"]:
        # a promoter that died between its champion write and LATEST: finish its work
        registry.sync(args.store, args.model)
        print(f"{args.model}: LATEST repaired to follow the champion ({champ['version']})")
    if failed:
        print(f"verify failed: {len(failed)} of {len(targets)} version(s) of {args.model} differ from their manifest", file=sys.stderr)
        return EXIT_VERIFY
    return EXIT_OK


def cmd_adopt(args) -> int:
    out = registry.adopt(args.store, args.model, champion=args.champion, reason=args.reason)
    for version, why in sorted((out or {}).get("skipped", {}).items()):
        print(f"{args.model}/{version}: not adopted: {why}", file=sys.stderr)
    if out is None or out["version"] is None:
        print(f"{args.model}: nothing to adopt (no version newer than the champion{' that qualifies' if out else ''})")
    else:
        moved = ", ".join(out["moved"]) or "nothing (the aliases are ahead of it)"
        print(f"{args.model}: adopted {out['version']} as {moved}{' (LATEST follows)' if 'champion' in out['moved'] else ''}")
    return EXIT_OK


def default_store() -> str | None:
    return os.environ.get("MLPLATFORM_STORE") or os.environ.get("MLPLATFORM_MODEL_STORE")


def parser(prog: str = "python -m ops.models") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", default=default_store(), help="model store root: path, file:// or s3:// [env MLPLATFORM_STORE]")
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("list", help="versions with their aliases, gate figure and rejection (when, who, why)")
    s.add_argument("--model", help="one model (default: every model in the store)")
    s.add_argument("--no-header", action="store_true", help="rows only (for scripts)")
    s.set_defaults(fn=cmd_list)

    s = sub.add_parser("show", help="one version: manifest, metrics, aliases, history, rejection record")
    s.add_argument("--model", required=True)
    s.add_argument("ref", nargs="?", help="version or alias (default: champion)")
    s.add_argument("--version", dest="version_flag", metavar="VERSION", help="the same, as a flag (mlp's common --version)")
    s.set_defaults(fn=cmd_show)

    s = sub.add_parser("promote", help="move an alias forward, or copy a version to another store and make it champion there")
    s.add_argument("--model", required=True)
    s.add_argument("version", nargs="?", help="version (between stores, default: the source's champion)")
    s.add_argument("--version", dest="version_flag", metavar="VERSION", help="the same, as a flag (mlp's common --version)")
    s.add_argument("--alias", default="champion", choices=["champion", "candidate"])
    s.add_argument("--from", dest="source", help="source store (promotion between stores)")
    s.add_argument("--to", dest="target", help="target store (promotion between stores)")
    s.add_argument(
        "--candidate", action="store_true", help="between stores: make it the target's candidate only (its canary decides the champion)"
    )
    s.add_argument("--reason", required=True, help="why: recorded in the audit log")
    s.set_defaults(fn=cmd_promote, needs_store=False)

    s = sub.add_parser(
        "reject", help="mark a version rejected: never champion, candidate or promoted again (the champion is rolled back first)"
    )
    s.add_argument("--model", required=True)
    s.add_argument("version", nargs="?")
    s.add_argument("--version", dest="version_flag", metavar="VERSION", help="the same, as a flag (mlp's common --version)")
    s.add_argument("--reason", required=True, help="why: e.g. the failed analysis metric and value")
    s.set_defaults(fn=cmd_reject)

    s = sub.add_parser("rollback", help="move the champion back and reject the version it leaves; LATEST follows")
    s.add_argument("--model", required=True)
    s.add_argument("--to", help="version to roll back to (default: the latest earlier champion that is not rejected)")
    s.add_argument("--reason", required=True, help="why: recorded in the audit log")
    s.set_defaults(fn=cmd_rollback)

    s = sub.add_parser("verify", help="check files against their manifest (and repair LATEST if it lags the champion)")
    s.add_argument("--model", required=True)
    s.add_argument("ref", nargs="?", help="version or alias (default: champion)")
    s.add_argument("--version", dest="version_flag", metavar="VERSION", help="the same, as a flag (mlp's common --version)")
    s.add_argument("--all", action="store_true", help="every version of the model")
    s.set_defaults(fn=cmd_verify)

    s = sub.add_parser("adopt", help="make the newest published version whose gate passed the candidate (what the pipeline does)")
    s.add_argument("--model", required=True)
    s.add_argument("--champion", action="store_true", help="also the champion, LATEST following (a store where no canary judges)")
    s.add_argument("--reason", required=True, help="why: recorded in the audit log")
    s.set_defaults(fn=cmd_adopt)
    return p


def _version_flag(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """``--version V`` is the positional VERSION/REF spelled as a flag; giving both is a usage error."""
    flag = getattr(args, "version_flag", None)
    slot = "ref" if hasattr(args, "ref") else "version"
    if flag is not None:
        if getattr(args, slot, None) not in (None, flag):
            p.error(f"give the version once: {getattr(args, slot)} or --version {flag}")
        setattr(args, slot, flag)
    if args.cmd == "reject" and not args.version:
        p.error("reject: name the version (VERSION or --version VERSION)")


def main(argv: list[str] | None = None, prog: str = "python -m ops.models") -> int:
    p = parser(prog)
    args = p.parse_args(argv)
    _version_flag(p, args)
    if getattr(args, "needs_store", True) and not args.store:
        print("models: error: no store: pass --store, set MLPLATFORM_STORE, or name a deployed --stack (mlp models)", file=sys.stderr)
        return EXIT_USAGE
    try:
        return args.fn(args)
    except registry.AliasConflict as exc:
        print(f"models: conflict: {exc}", file=sys.stderr)
        return EXIT_CONFLICT
    except registry.VerifyError as exc:
        print(f"models: error: {exc}", file=sys.stderr)
        return EXIT_VERIFY
    except (registry.RegistryError, storage.Conflict, ValueError) as exc:
        print(f"models: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except Exception as exc:  # store unreachable, no credentials, ...: one line, not a traceback
        if type(exc).__module__.split(".")[0] in ("botocore", "boto3", "urllib3") or isinstance(exc, OSError):
            first = str(exc).splitlines()[0] if str(exc) else ""
            print(f"models: error: store {args.store or args.source or ''}: {type(exc).__name__}: {first}", file=sys.stderr)
            return EXIT_ERROR
        raise


if __name__ == "__main__":
    sys.exit(main())
