"""A domain at base speed: an adapter merged into the base weights (`serve --merge`) against the
same adapter served through LoRA.

`python -m bench.merge [--adapter NAME] [--quick]` (default adapter: house-style, `make
demo-adapter`) starts the real engine four times, each in its own process, in A B B A order:
A is the base model with LoRA on and the adapter loaded (how ragtune serves it without a merge),
B is the engine `serve --merge NAME` starts (the merged weights, LoRA on, the base model through
its correction). Each start:
- checks the engine's canary against transformers on the folder it runs (the self-check);
- answers the adapter's held-out prompts greedily (examples/house-style/heldout.jsonl), as the
  domain is served there (A: through LoRA; B: merged, no LoRA), and the base model's answers;
- times a decode-heavy batch of 32 concurrent requests (short prompts, 64 tokens, ignore_eos)
  for the domain and for the base model.
Writes bench/results/merge.json and .md: token agreement of B's greedy answers with A's (each
answer's tokens up to the first that differs count as agreeing, every token after it as not),
and throughput ratios at concurrency 32.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.machine import machine, write_result

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
HELDOUT = REPO / "examples" / "house-style" / "heldout.jsonl"
ORDER = ["lora", "merged", "merged", "lora"]
ANSWER_TOKENS = 64
CONCURRENCY = 32


async def _answer(engine: Any, ids: list[int], tokens: int, adapter: Any, ignore_eos: bool = False) -> str:
    from ragtune.serving.engine import SamplingOptions
    from ragtune.serving.responses import new_id

    options = SamplingOptions(max_tokens=tokens, temperature=0.0, ignore_eos=ignore_eos)
    out = ""
    async for delta in engine.generate(ids, options, new_id("bench"), adapter):
        out += delta.text
    return out


async def _batch(engine: Any, prompts: list[list[int]], adapter: Any) -> float:
    started = time.perf_counter()
    await asyncio.gather(*(_answer(engine, p, ANSWER_TOKENS, adapter, ignore_eos=True) for p in prompts))
    return len(prompts) * ANSWER_TOKENS / (time.perf_counter() - started)


async def measure(kind: str, adapter_name: str, quick: bool) -> dict[str, Any]:
    """One engine start: `kind` "lora" (base weights + the adapter) or "merged"."""
    from transformers import AutoTokenizer

    from ragtune.serving import merged as merging
    from ragtune.serving.canary import Canary, reference_answer
    from ragtune.serving.engine import AdapterRef, VllmEngine
    from ragtune.serving.settings import load_settings

    settings = load_settings(serving={"adapters": {adapter_name: adapter_name}, "merge": adapter_name})
    tok = AutoTokenizer.from_pretrained(settings.base_model_path)

    def ids(messages: list[dict[str, str]]) -> list[int]:
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return tok.encode(text, add_special_tokens=False)

    heldout = [json.loads(line) for line in HELDOUT.read_text().splitlines() if line.strip()]
    prompts = [ids(row["messages"]) for row in heldout[: 12 if quick else None]]
    short = [
        ids([{"role": "user", "content": f"Request {i}: name a railway station."}])
        for i in range(CONCURRENCY)
    ]

    merge = merging.prepare(settings)
    assert merge is not None
    if kind == "merged":
        folder, engine_settings = merge.folder, merging.engine_settings(settings.engine, merge)
    else:
        folder, engine_settings = settings.base_model_path, settings.engine
    engine = VllmEngine(folder, engine_settings)
    out: dict[str, Any] = {
        "kind": kind,
        "dtype": engine_settings.dtype,
        "max_lora_rank": engine_settings.max_lora_rank,
    }
    try:
        canary = Canary(engine, tok)
        expected = await asyncio.to_thread(reference_answer, folder, canary.prompt_ids)
        await canary.calibrate(expected)  # raises when the engine disagrees with transformers
        out["self_check"] = canary.reference
        if kind == "merged":
            from ragtune.core.merge import correction

            base_fix = await asyncio.to_thread(correction, merge.folder, merge.info, None)
            base = AdapterRef(name="base", version=1, path=base_fix, engine_path=base_fix)
            await engine.add_adapter(base)
            domain = None
        else:
            domain = AdapterRef(name=adapter_name, version=1, path=merge.info.path)
            await engine.add_adapter(domain)
            base = None
        for label, adapter in (("domain", domain), ("base", base)):
            texts = await asyncio.gather(*(_answer(engine, p, ANSWER_TOKENS, adapter) for p in prompts))
            out[f"{label}_answers"] = [tok.encode(t, add_special_tokens=False) for t in texts]
        await _batch(engine, short[:4], domain)  # warm both paths
        await _batch(engine, short[:4], base)
        out["domain_tok_s"] = [round(await _batch(engine, short, domain), 1) for _ in range(2)]
        out["base_tok_s"] = [round(await _batch(engine, short, base), 1) for _ in range(2)]
    finally:
        engine.shutdown()
    return out


def agreement(ours: list[list[int]], reference: list[list[int]]) -> tuple[int, int, int]:
    """(tokens agreeing, tokens in the reference answers, answers identical)."""
    agree = total = same = 0
    for got, want in zip(ours, reference, strict=True):
        total += len(want)
        prefix = next(
            (i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b), min(len(got), len(want))
        )
        agree += prefix
        same += got == want
    return agree, total, same


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--adapter", default="house-style", help="an adapter under adapters/ (default house-style)"
    )
    parser.add_argument("--quick", action="store_true", help="12 held-out prompts instead of 42")
    parser.add_argument("--one", choices=["lora", "merged"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(asyncio.run(measure(args.one, args.adapter, args.quick))))
        return
    if not (REPO / "adapters" / args.adapter).is_dir():
        raise SystemExit(f"adapters/{args.adapter} is missing: `make demo-adapter` trains house-style")
    started = time.perf_counter()
    runs = []
    for kind in ORDER:
        cmd = [sys.executable, "-m", "bench.merge", "--one", kind, "--adapter", args.adapter]
        cmd += ["--quick"] if args.quick else []
        done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f"{kind} run failed:\n{done.stderr[-3000:]}")
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print({k: v for k, v in runs[-1].items() if not k.endswith("answers")}, flush=True)
    lora, merged = runs[0], runs[1]
    record = {
        "command": f"python -m bench.merge --adapter {args.adapter}" + (" --quick" if args.quick else ""),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "wall_s": round(time.perf_counter() - started, 1),
        "machine": machine() | {"loadavg_after": [round(x, 2) for x in os.getloadavg()]},
        "adapter": args.adapter,
        "prompts": len(lora["domain_answers"]),
        "domain_agreement": agreement(merged["domain_answers"], lora["domain_answers"]),
        "base_agreement": agreement(merged["base_answers"], lora["base_answers"]),
        "repeat_agreement": agreement(runs[2]["domain_answers"], merged["domain_answers"]),
        "runs": [{k: v for k, v in r.items() if not k.endswith("answers")} for r in runs],
    }
    write_result(RESULTS, "merge", record, markdown(record))


def markdown(record: dict[str, Any]) -> str:
    m = record["machine"]
    by = {kind: [r for r in record["runs"] if r["kind"] == kind] for kind in ("lora", "merged")}

    def tps(kind: str, key: str) -> float:
        return statistics.median(x for r in by[kind] for x in r[key])

    def pct(agree: list[int]) -> str:
        share = agree[0] / max(agree[1], 1)
        return f"{agree[0]}/{agree[1]} tokens ({share:.1%}), {agree[2]}/{record['prompts']} answers identical"

    lora, merged = by["lora"][0], by["merged"][0]
    domain_lora, domain_merged = tps("lora", "domain_tok_s"), tps("merged", "domain_tok_s")
    base_plain, base_fixed = tps("lora", "base_tok_s"), tps("merged", "base_tok_s")
    lines = [
        "# A domain at base speed: an adapter merged into the base weights, against it through LoRA",
        "",
        f"`{record['command']}` on {record['date']}: {m['cpu']}, {m['cores']} cores; engine dtype "
        f"{lora['dtype']} (auto), LoRA on in both; load average {m['loadavg_after']} at the end. "
        f"Runs in A B B A order (A: base weights + `{record['adapter']}` through LoRA, max rank "
        f"{lora['max_lora_rank']}; B: `serve --merge {record['adapter']}`'s engine, merged weights, "
        f"max rank {merged['max_lora_rank']}). Both engines passed the self-check against "
        f"transformers on the folder they run ({lora['self_check']!r} / {merged['self_check']!r}).",
        "",
        f"## Greedy agreement on the adapter's {record['prompts']} held-out prompts "
        f"({ANSWER_TOKENS} tokens at most)",
        "",
        f"- the domain, merged (no LoRA) against LoRA: {pct(record['domain_agreement'])}",
        "- the base model, through its correction on the merged engine, against the plain base: "
        f"{pct(record['base_agreement'])}",
        f"- the merged engine against itself in a second start: {pct(record['repeat_agreement'])}",
        "",
        f"## Throughput, {CONCURRENCY} concurrent requests x {ANSWER_TOKENS} tokens "
        "(tokens/s, two batches per start)",
        "",
        "| start | engine | domain | base model |",
        "|---|---|---|---|",
    ]
    for i, r in enumerate(record["runs"], start=1):
        what = "base + LoRA" if r["kind"] == "lora" else "merged"
        lines.append(f"| {i} | {what} | {r['domain_tok_s']} | {r['base_tok_s']} |")
    lines += [
        "",
        f"Medians: domain through LoRA {domain_lora:.1f}, merged {domain_merged:.1f}; base model "
        f"{base_plain:.1f} (plain) / {base_fixed:.1f} (through the correction).",
        f"Merged domain / base model: **{domain_merged / base_plain:.2f}x**; merged domain / the "
        f"same domain through LoRA: {domain_merged / domain_lora:.2f}x; base through the "
        f"correction / plain base: {base_fixed / base_plain:.2f}x.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
