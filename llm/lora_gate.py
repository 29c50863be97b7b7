"""The evaluation gate of a LoRA adapter, and its publication as an immutable registry version.

    python -m llm.lora_gate gate --store ROOT --adapter NAME --run DIR --heldout FILE [--golden FILE]
                                 --base NAME --base-version V [--min-improvement F] [--champion-margin F]
                                 [--seq-len N] [--publish-as candidate|champion]
    python -m llm.lora_gate fetch --store ROOT --adapter NAME --version V --base NAME --base-version V --dest DIR
    python -m llm.lora_gate promote --from ROOT --to ROOT --adapter NAME --version V

``gate`` reads a finished run (llm/finetune.py: the adapter files and ``lora-run.json``), fetches its base
from the registry (digest-verified) and measures perplexity on the held-out set committed with the model
(one example a line, or ``.jsonl`` with ``text``), every token counted once:

1. **base + adapter must beat the base alone** by ``min_improvement``: ``ppl_adapter <= ppl_base x (1 -
   min_improvement)`` (0.05: at least 5 % lower perplexity);
2. **and must not fall below the champion adapter** beyond ``champion_margin``: ``ppl_adapter <=
   ppl_champion x (1 + champion_margin)``, the champion loaded beside it on the same base (PEFT's
   multi-adapter model: the base is loaded once). A champion trained on another base version is not
   comparable (it cannot be served on this base either: ``check_base``) and is not compared; the record
   says so;
3. **and must answer its golden prompts** (``--golden``: ``models/<adapter>/golden.yaml``, llm/golden.py's
   format and checker, the set the base's canary later sends with ``model: <adapter>``): base + adapter
   generate greedily (transformers + PEFT, at most ``golden_max_tokens`` tokens; a chat prompt through the
   tokenizer's chat template, as vLLM renders it); one failed case refuses the adapter. A prompt with a
   ``responseFormat`` needs vLLM's structured output: not checked here (the verdict lists it), the
   canary judges it.

Only a passing adapter is published (``registry.publish``: files first, the SHA-256 manifest last, written
once), as the candidate (a canary decides) or the champion: ``adapter_config.json``,
``adapter_model.safetensors`` and ``lora-adapter.json`` (the base's model, version and digest, the gate's
figures, the run's record). An adapter whose run used another base than the one it is published for, or
whose base's bytes in the store no longer match the digest the run recorded, is refused.

``fetch`` is the serving side's check: the adapter version, digest-verified, into DEST, refused when
rejected or when its base is not the served base version. ``promote`` copies a version to the next
stack's store (as its candidate) only where that store already holds the same base version with the same
digest; the bytes are checked on the way (a flipped byte is refused).

Exit codes: 0 published / fetched; 2 refused (base mismatch, bad input); 3 gate failed, nothing published.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import secrets
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from llm import finetune, fit, golden
from training import registry, storage

EXIT_OK, EXIT_REFUSED, EXIT_GATE = 0, 2, 3
META = finetune.ADAPTER_RECORD
REQUIRED = (*finetune.ADAPTER_FILES, META)


# The base's pod template carries each adapter's served version as ``adapter.mlplatform.io/<adapter>:
# <version>`` (components/models/llm_service.py renders it beside rollout_specs.VERSION_ANNOTATION):
# ops/deliver.py reads it back to know that the base's canary serves the adapter version it pinned.
ANNOTATION_PREFIX = "adapter.mlplatform.io/"


def version_annotation(adapter: str) -> str:
    return ANNOTATION_PREFIX + adapter


class AdapterRefused(registry.RegistryError):
    """The adapter does not belong to the base it is published or served for. One line."""


@dataclass(frozen=True)
class GateConfig:
    min_improvement: float = 0.05  # relative perplexity reduction over the base alone
    champion_margin: float = 0.02  # how much higher than the champion's the perplexity may be
    golden_max_tokens: int = 64  # a golden prompt's maxTokens, capped (greedy generation on the gate's CPU/GPU)


@dataclass
class Verdict:
    passed: bool
    reason: str
    base_ppl: float
    adapter_ppl: float
    champion_ppl: float | None = None
    champion: str | None = None
    tokens: int = 0
    golden: dict | None = None  # golden_result(): passed / failed / skipped case ids (None: no set given)

    def line(self) -> str:
        champ = f", champion {self.champion} {self.champion_ppl:.3f}" if self.champion_ppl is not None else ""
        return f"lora gate {'PASSED' if self.passed else 'FAILED'}: perplexity base {self.base_ppl:.3f}, adapter {self.adapter_ppl:.3f}{champ}: {self.reason}"


# ---- golden prompts ----


def golden_result(prompts: list[golden.Prompt], answers: dict[str, str | None]) -> dict:
    """Each case checked (llm/golden.py ``check``) on base + adapter's answer; an answer of None is a
    case the gate cannot reproduce (a ``responseFormat``: vLLM's structured output), skipped and listed."""
    out: dict = {"passed": [], "failed": {}, "skipped": {}}
    for p in prompts:
        answer = answers.get(p.id)
        if answer is None:
            out["skipped"][p.id] = "responseFormat needs vLLM's structured output: judged by the canary"
        elif problems := golden.check(p, answer):
            out["failed"][p.id] = {"problems": problems, "answer": answer[:200]}
        else:
            out["passed"].append(p.id)
    return out


def judge_golden(result: dict | None) -> tuple[bool, str]:
    """Every checked golden case must pass; no set: nothing to judge."""
    if result is None:
        return True, "no golden set given"
    if result["failed"]:
        cases = ", ".join(f"{i} ({'; '.join(f['problems'])}: answered {f['answer'][:60]!r})" for i, f in result["failed"].items())
        return False, f"{len(result['failed'])} of {len(result['failed']) + len(result['passed'])} golden prompts failed: {cases}"
    skipped = f", {len(result['skipped'])} left to the canary" if result["skipped"] else ""
    return True, f"{len(result['passed'])} golden prompts passed{skipped}"


def prompt_ids(tok, p: golden.Prompt):
    """The prompt's input ids as vLLM builds them: a completion prompt with the tokenizer's special
    tokens, a chat through the tokenizer's chat template (rendered, then tokenized without adding any).
    A chat prompt on a tokenizer without a template: None (vLLM refuses it too: a failed case)."""
    if p.messages is None:
        return tok(p.prompt, return_tensors="pt").input_ids
    if not getattr(tok, "chat_template", None):
        return None
    text = tok.apply_chat_template(p.messages, add_generation_prompt=True, tokenize=False)
    return tok(text, add_special_tokens=False, return_tensors="pt").input_ids


def golden_answers(model, tok, prompts: list[golden.Prompt], max_tokens: int) -> dict[str, str | None]:
    """Greedy answers of ``model`` (base + the active adapter) to every prompt; None for a prompt with
    a ``responseFormat`` (not reproducible here), "" where the base has no chat template for a chat."""
    import torch

    model.eval()
    answers: dict[str, str | None] = {}
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    for p in prompts:
        if p.response_format is not None:
            answers[p.id] = None
            continue
        ids = prompt_ids(tok, p)
        if ids is None:
            answers[p.id] = ""
            continue
        ids = ids.to(model.device)
        with torch.no_grad():
            out = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=min(p.max_tokens, max_tokens),
                do_sample=False,
                pad_token_id=pad,
            )
        answers[p.id] = tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    return answers


def judge(base_ppl: float, adapter_ppl: float, champion_ppl: float | None, cfg: GateConfig) -> tuple[bool, str]:
    """The gate's rule on three perplexities (the champion's None: none comparable)."""
    need = base_ppl * (1 - cfg.min_improvement)
    if not adapter_ppl <= need:
        return False, f"adapter perplexity {adapter_ppl:.3f} > {need:.3f} required (base {base_ppl:.3f} less {cfg.min_improvement:.0%})"
    if champion_ppl is not None:
        allowed = champion_ppl * (1 + cfg.champion_margin)
        if not adapter_ppl <= allowed:
            return (
                False,
                f"adapter perplexity {adapter_ppl:.3f} > {allowed:.3f} allowed (champion {champion_ppl:.3f} plus {cfg.champion_margin:.0%})",
            )
    return True, "better than the base" + (" and not worse than the champion" if champion_ppl is not None else "")


# ---- perplexity ----


def perplexity(model, data) -> tuple[float, int]:
    """exp(mean next-token NLL) over the held-out blocks, each predicted token counted once."""
    import torch

    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for row in data:
            ids = row.unsqueeze(0).to(model.device)
            n = ids.shape[1] - 1
            total += float(model(input_ids=ids, labels=ids).loss) * n
            count += n
    return math.exp(total / count), count


def evaluate(
    base_dir: Path,
    adapter_dir: Path,
    heldout: list[str],
    seq_len: int,
    champion_dir: Path | None = None,
    prompts: list[golden.Prompt] | None = None,
    max_tokens: int = GateConfig.golden_max_tokens,
) -> dict:
    """Perplexities of the base alone, base + adapter and (given) base + champion adapter; with
    ``prompts``, base + adapter's golden answers (``answers``)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base_dir)
    data = finetune.blocks(tok, heldout, seq_len)
    # the run's device and dtype (finetune.train_dtype): a 7B in float32 fits neither a 24 GB GPU nor the pod's memory
    device = "cuda" if torch.cuda.is_available() else "cpu"
    on_gpu = {} if device == "cpu" else {"device_map": {"": device}}
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=finetune.train_dtype(device), **on_gpu)
    model = PeftModel.from_pretrained(base, adapter_dir, adapter_name="candidate")
    with model.disable_adapter():
        base_ppl, tokens = perplexity(model, data)
    out = {"base_ppl": base_ppl, "tokens": tokens}
    out["adapter_ppl"], _ = perplexity(model, data)
    if prompts:
        out["answers"] = golden_answers(model, tok, prompts, max_tokens)
    if champion_dir is not None:
        model.load_adapter(champion_dir, adapter_name="champion")
        model.set_adapter("champion")
        out["champion_ppl"], _ = perplexity(model, data)
    return out


# ---- base checks ----


def check_base(record: dict, model: str, version: str, what: str) -> None:
    """``record['base']`` is ``model``/``version``; else AdapterRefused naming both."""
    b = record.get("base") or {}
    if (b.get("model"), b.get("version")) != (model, version):
        raise AdapterRefused(
            f"{what} was trained on base {b.get('model')}/{b.get('version')} (digest {b.get('digest')}), not on {model}/{version}: refused "
            "(an adapter only fits the exact base weights it was trained on; retrain it on this base)"
        )


def adapter_record(store: str, name: str, version: str) -> dict:
    try:
        return json.loads(storage.read_text(storage.join(registry.model_root(store, name), version, META)))
    except FileNotFoundError:
        raise registry.RegistryError(f"{name}/{version} in {store}: no {META}: not a LoRA adapter version") from None


def fetch_adapter(store: str, name: str, version: str, base: str, base_version: str, dest: Path) -> dict:
    """The adapter version into ``dest`` (every file checked against its manifest), for a server of
    ``base``/``base_version``: refused when rejected or trained on another base. Returns its record."""
    if (mark := registry.rejection(store, name, version)) is not None:
        raise AdapterRefused(f"adapter {name}/{version} is rejected ({registry.describe_rejection(mark)}): not served")
    record = adapter_record(store, name, version)
    check_base(record, base, base_version, f"adapter {name}/{version}")
    registry.fetch(store, name, version, dest)
    return record


def champion_adapter(store: str, name: str, base: str, base_version: str, dest: Path) -> tuple[str | None, Path | None, str]:
    """The current champion adapter fetched into ``dest`` when it is comparable (same base version)."""
    champ = registry.get_alias(store, name, "champion")
    if champ is None:
        return None, None, "no champion adapter yet"
    v = champ["version"]
    rec = adapter_record(store, name, v)
    b = rec.get("base") or {}
    if (b.get("model"), b.get("version")) != (base, base_version):
        return v, None, f"champion {v} is on base {b.get('model')}/{b.get('version')}: not comparable, not compared"
    registry.fetch(store, name, v, dest)
    return v, dest, f"champion {v}"


def promote(src: str, dst: str, name: str, version: str, *, reason: str) -> dict:
    """Copy an adapter version to the next stack's store as its candidate, only where that store holds
    the very base it was trained on (same version, same digest: promote the base first). The bytes are
    checked as they are read and as they land (``registry.promote_between``); a rejected version is not copied."""
    rec = adapter_record(src, name, version)
    b = rec.get("base") or {}
    try:
        there = finetune.base_identity(dst, b.get("model"), b.get("version"))
    except registry.RegistryError:
        raise AdapterRefused(
            f"adapter {name}/{version} needs base {b.get('model')}/{b.get('version')} in {dst}, which has no such version: promote the base first"
        ) from None
    if there["digest"] != b.get("digest"):
        raise AdapterRefused(
            f"base {b.get('model')}/{b.get('version')} in {dst} has digest {there['digest']}, the adapter's is {b.get('digest')}: refused"
        )
    return registry.promote_between(src, dst, name, version, reason=reason, champion=False)


def lora_buffer_bytes(config: dict, max_rank: int, max_loras: int, tp: int = 1) -> int:
    """GPU memory vLLM preallocates per GPU for ``--enable-lora``: llm/fit.py ``lora_buffer_bytes`` (the fit check adds it)."""
    return fit.lora_buffer_bytes(config, max_rank, max_loras, tp)


def serve_args(adapters: dict[str, Path | str], max_rank: int, max_loras: int | None = None) -> list[str]:
    """The vLLM flags that serve ``adapters`` ({served name: fetched folder}) beside the base: a client
    picks one by the OpenAI ``model`` field (the base keeps its own served name). ``max_rank``: the
    largest rank among them (vLLM sizes its LoRA buffers by it); ``max_loras``: adapters in one batch
    (default: all of them). Each flag is in the pinned vLLM's flag list (tests/llm/test_lora.py)."""
    if not adapters:
        return []
    mods = [f"{name}={path}" for name, path in sorted(adapters.items())]
    return ["--enable-lora", "--max-lora-rank", str(max_rank), "--max-loras", str(max_loras or len(adapters)), "--lora-modules", *mods]


# ---- gate + publish ----


def version_name(run_dir: Path) -> str:
    h = hashlib.sha256((run_dir / "adapter_model.safetensors").read_bytes()).hexdigest()[:12]
    # time-sorted; the random part keeps the name from being guessed in advance (issue 24 item 8)
    return f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{h}-{secrets.token_hex(6)}"


def read_run(run_dir: Path, store: str, base: str, base_version: str) -> dict:
    """The run's record, checked against the base it is published for and that base's bytes now."""
    try:
        run = json.loads((run_dir / finetune.RUN_RECORD).read_text())
    except (OSError, ValueError) as exc:
        raise AdapterRefused(f"{run_dir}: no readable {finetune.RUN_RECORD} ({exc}): not a finished LoRA run") from None
    missing = [f for f in finetune.ADAPTER_FILES if not (run_dir / f).is_file()]
    if missing:
        raise AdapterRefused(f"{run_dir}: missing {missing}: not a finished LoRA run")
    check_base(run, base, base_version, f"the adapter in {run_dir}")
    now = finetune.base_identity(store, base, base_version)["digest"]
    if run["base"].get("digest") != now:
        raise AdapterRefused(
            f"base {base}/{base_version} in {store} has digest {now}, the run trained on {run['base'].get('digest')}: refused"
        )
    return run


def read_golden(path: Path | None) -> list[golden.Prompt] | None:
    if path is None:
        return None
    try:
        return golden.load(path)
    except (golden.GoldenSetError, OSError, ValueError) as exc:
        raise AdapterRefused(f"golden set {path}: {exc}".replace("\n", "; ")) from None


def gate(
    store: str,
    name: str,
    run_dir: Path,
    heldout: Path,
    base: str,
    base_version: str,
    cfg: GateConfig,
    seq_len: int,
    golden_set: Path | None = None,
) -> Verdict:
    """Measure the three perplexities and, given ``golden_set``, base + adapter's golden answers, and
    apply the rule: both must pass (nothing written)."""
    read_run(run_dir, store, base, base_version)
    texts = finetune.read_texts(heldout)
    prompts = read_golden(golden_set)
    with tempfile.TemporaryDirectory(prefix="lora-gate-") as tmp:
        base_dir = Path(tmp, "base")
        finetune.fetch_base(store, base, base_version, base_dir)
        champ, champ_dir, _note = champion_adapter(store, name, base, base_version, Path(tmp, "champion"))
        m = evaluate(base_dir, run_dir, texts, seq_len, champ_dir, prompts, cfg.golden_max_tokens)
    passed, reason = judge(m["base_ppl"], m["adapter_ppl"], m.get("champion_ppl"), cfg)
    if champ is not None and champ_dir is None:
        reason += f" (champion {champ} is on another base: not compared)"
    result = golden_result(prompts, m["answers"]) if prompts else None
    golden_ok, golden_reason = judge_golden(result)
    champion = champ if champ_dir else None
    return Verdict(
        passed and golden_ok,
        f"{reason}; {golden_reason}",
        m["base_ppl"],
        m["adapter_ppl"],
        m.get("champion_ppl"),
        champion,
        m["tokens"],
        result,
    )


def publish(store: str, name: str, run_dir: Path, verdict: Verdict, cfg: GateConfig, *, champion: bool) -> str:
    """The passing adapter as a new immutable version; returns the version."""
    if not verdict.passed:
        raise AdapterRefused(f"refusing to publish an adapter that failed its gate: {verdict.reason}")
    run = json.loads((run_dir / finetune.RUN_RECORD).read_text())
    version = version_name(run_dir)
    with tempfile.TemporaryDirectory(prefix="lora-publish-") as tmp:
        out = Path(tmp)
        for f in finetune.ADAPTER_FILES:
            (out / f).write_bytes((run_dir / f).read_bytes())
        meta = {
            "kind": "lora",
            "adapter": name,
            "version": version,
            "base": run["base"],
            "gate": {**asdict(verdict), **asdict(cfg)},
            "run": run,
            "published_at": time.time(),
            "published_by": registry.actor(),
        }
        (out / META).write_text(json.dumps(meta, indent=2, sort_keys=True))
        # candidate: the Job's publish, a version only (its role may not move aliases; the pipeline adopts:
        # issue 24 item 8); champion: a person's run, adopted at once
        registry.publish(
            out, store, name, version, reason=f"lora gate: {verdict.reason}", champion=champion, required=REQUIRED, adopt=champion
        )
    return version


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m llm.lora_gate", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("gate", help="evaluate a finished run on the held-out set; publish it when it passes")
    f = sub.add_parser("fetch", help="an adapter version into DEST, digest-verified, for a server of BASE/BASE_VERSION")
    pr = sub.add_parser("promote", help="copy an adapter version to another store (as its candidate) that holds its base")
    pr.add_argument("--from", dest="src", required=True)
    pr.add_argument("--to", dest="dst", required=True)
    pr.add_argument("--adapter", required=True)
    pr.add_argument("--version", required=True)
    pr.add_argument("--reason", default="promotion")
    for sp in (g, f):
        for flag in ("--store", "--adapter", "--base", "--base-version"):
            sp.add_argument(flag, required=True)
    g.add_argument("--run", required=True, type=Path)
    g.add_argument("--heldout", required=True, type=Path)
    g.add_argument("--golden", type=Path, help="the adapter's golden set (models/<adapter>/golden.yaml): every case must pass")
    g.add_argument("--golden-max-tokens", type=int, default=GateConfig.golden_max_tokens)
    g.add_argument("--min-improvement", type=float, default=GateConfig.min_improvement)
    g.add_argument("--champion-margin", type=float, default=GateConfig.champion_margin)
    g.add_argument("--seq-len", type=int, default=finetune.LoraParams.seq_len)
    g.add_argument("--publish-as", choices=("candidate", "champion"), default="candidate")
    f.add_argument("--version", required=True)
    f.add_argument("--dest", required=True, type=Path)
    return p


def main(argv: list[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    try:
        if a.cmd == "promote":
            print(json.dumps(promote(a.src, a.dst, a.adapter, a.version, reason=a.reason), sort_keys=True, default=str))
            return EXIT_OK
        if a.cmd == "fetch":
            rec = fetch_adapter(a.store, a.adapter, a.version, a.base, a.base_version, a.dest)
            print(json.dumps({"fetched": str(a.dest), "version": a.version, "base": rec["base"]}, sort_keys=True))
            return EXIT_OK
        if (already := Path(a.run) / finetune.ALREADY).exists():
            print(f"lora gate: nothing to gate: these inputs already made {already.read_text().strip()}", file=sys.stderr)
            return EXIT_OK
        cfg = GateConfig(a.min_improvement, a.champion_margin, a.golden_max_tokens)
        verdict = gate(a.store, a.adapter, a.run, a.heldout, a.base, a.base_version, cfg, a.seq_len, a.golden)
        print(verdict.line(), file=sys.stderr)
        if not verdict.passed:
            print(json.dumps({"published": None, **asdict(verdict)}, sort_keys=True))
            return EXIT_GATE
        version = publish(a.store, a.adapter, a.run, verdict, cfg, champion=a.publish_as == "champion")
        print(json.dumps({"published": version, **asdict(verdict)}, sort_keys=True))
        return EXIT_OK
    except (AdapterRefused, finetune.FinetuneError, registry.RegistryError, storage.BadURI) as exc:
        print(f"lora gate: REFUSED: {exc}", file=sys.stderr)
        return EXIT_REFUSED


if __name__ == "__main__":
    sys.exit(main())
