"""Parity against raw vLLM at its best: ragtune's server against vLLM's own OpenAI server in every
configuration it offers on this machine, the best of them taken at each concurrency.

`python -m bench.parity [--quick]` starts, one at a time, vLLM's OpenAI server with each executor
(`uni`: the model in the engine-core process; `mp`: in a worker process of its own) and
VLLM_ENABLE_V1_MULTIPROCESSING on (the engine core in a child process) and off (inside the API
process), then ragtune with its defaults, then the raw configurations again in reverse order (A B
... B A, so that drift of a shared machine shows). Each start runs streamed chat (RAG off, 64
output tokens, ignore_eos, every request its own question) at concurrency 1, 8 and 32 with
serving_phases.rag_off. The anchor at each level is the best raw run there: the highest
throughput, and separately the lowest TTFT p50. Writes bench/results/parity.json and .md.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import serving_phases as ph
from bench.machine import machine, write_result
from bench.serving_data import load_questions
from bench.serving_servers import REPO, Server, ragtune, raw_vllm
from ragtune.serving.settings import EngineSettings

RESULTS = REPO / "bench" / "results"
DATASET = REPO / "examples" / "disflqa"
RAW = [("uni", False), ("uni", True), ("mp", True), ("mp", False)]  # (executor, multiprocessing)
LEVELS = {1: 8, 8: 32, 32: 64}
QUICK_LEVELS = {1: 2, 8: 8, 32: 32}


def label(executor: str, multiprocessing: bool) -> str:
    return f"raw {executor}, multiprocessing {'on' if multiprocessing else 'off'}"


def measure(server: Server, questions: Any, levels: dict[int, int], max_tokens: int) -> dict[str, Any]:
    with server:
        ph.run(ph.warmup(server, questions))
        out = ph.run(ph.rag_off(server, questions, levels=levels, max_tokens=max_tokens))
    return {str(c): {k: v for k, v in lv.items() if k != "ttfts_ms"} for c, lv in out.items()} | {
        "start_s": server.start_s
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="few requests per level, 16 tokens")
    parser.add_argument(
        "--lora-ops",
        action="store_true",
        help="instead: raw vLLM (uni, multiprocessing off) at concurrency 32 with vLLM's CPU LoRA ops "
        "and with ragtune's (serving/lora_cpu.py, RAGTUNE_CPU_LORA_OPS=1), A B B A: where the lead "
        "at 32 comes from",
    )
    args = parser.parse_args()
    if args.lora_ops:
        lora_ops()
        return
    levels, max_tokens = (QUICK_LEVELS, 16) if args.quick else (LEVELS, 64)
    questions, what = load_questions(DATASET)
    model = REPO / "models" / "smollm2-135m-instruct"
    started = time.perf_counter()
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="ragtune-parity-") as tmp:
        work = Path(tmp)
        (work / "adapters").mkdir()
        order: list[tuple[str, bool] | None] = [*RAW, None, *reversed(RAW)]
        for i, config in enumerate(order):
            q = questions.sub(1000 * i)
            if config is None:
                server = ragtune(
                    model.parent,
                    workdir=work,
                    adapters_dir=work / "adapters",
                    indexes_dir=work / "indexes",
                    model_name=model.name,
                )
                name = "ragtune"
            else:
                executor, mp = config
                engine = EngineSettings(executor=executor)
                name = label(executor, mp)
                server = raw_vllm(model, engine, workdir=work, model_name=model.name, multiprocessing=mp,
                                  label=name.replace(" ", "-").replace(",", ""))  # fmt: skip
            print(f"[{i + 1}/{len(order)}] {name}", flush=True)
            try:
                runs.append({"server": name, **measure(server, q, levels, max_tokens)})
            except Exception as exc:  # a configuration this machine cannot run is recorded, not fatal
                runs.append({"server": name, "error": f"{type(exc).__name__}: {exc}"[:2000]})
            print(json.dumps(runs[-1])[:600], flush=True)
    record = {
        "command": "python -m bench.parity" + (" --quick" if args.quick else ""),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "wall_s": round(time.perf_counter() - started, 1),
        "machine": machine(),
        "questions": what,
        "levels": {str(k): v for k, v in levels.items()},
        "max_tokens": max_tokens,
        "runs": runs,
    }
    write_result(RESULTS, "parity" + ("-quick" if args.quick else ""), record, markdown(record))


def lora_ops() -> None:
    """Raw vLLM with its own CPU LoRA ops against the same server with ragtune's, A B B A."""
    questions, what = load_questions(DATASET)
    model = REPO / "models" / "smollm2-135m-instruct"
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="ragtune-parity-") as tmp:
        for i, ours in enumerate([False, True, True, False]):
            name = "raw uni, multiprocessing off" + (", ragtune's LoRA ops" if ours else "")
            server = raw_vllm(model, EngineSettings(executor="uni"), workdir=Path(tmp), model_name=model.name,
                              multiprocessing=False, label=f"ops-{i}")  # fmt: skip
            server.env["RAGTUNE_CPU_LORA_OPS"] = "1" if ours else "0"
            runs.append({"server": name, **measure(server, questions.sub(1000 * i), {32: 64}, 64)})
            print(json.dumps(runs[-1])[:300], flush=True)
    record = {
        "command": "python -m bench.parity --lora-ops",
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": machine(),
        "questions": what,
        "levels": {"32": 64},
        "max_tokens": 64,
        "runs": runs,
    }
    m = record["machine"]
    lines = [
        "# Where ragtune's lead at concurrency 32 comes from: vLLM's CPU LoRA ops",
        "",
        f"`{record['command']}` on {record['date']}: {m['cpu']}, {m['cores']} cores; vLLM's OpenAI server "
        "(uni, multiprocessing off, LoRA enabled, no adapter in any request), A B B A, 64 streamed "
        "requests of 64 tokens at concurrency 32.",
        "",
        "| server | tok/s | TTFT p50 ms |",
        "|---|---:|---:|",
    ]
    for name in dict.fromkeys(r["server"] for r in runs):
        p = pooled(runs, name, "32")
        assert p is not None
        lines.append(f"| {name} | {p['tok_s']:.1f} | {p['ttft_p50_ms']:.0f} |")
    write_result(RESULTS, "parity-lora-ops", record, "\n".join(lines) + "\n")


def pooled(runs: list[dict[str, Any]], name: str, level: str) -> dict[str, float] | None:
    """One server's throughput (tokens over summed wall time) and mean TTFT p50 over its runs."""
    mine = [r[level] for r in runs if r["server"] == name and level in r]
    if not mine:
        return None
    tokens = sum(lv["output_tokens"] for lv in mine)
    wall = sum(lv["wall_s"] for lv in mine)
    return {"tok_s": tokens / wall, "ttft_p50_ms": sum(lv["ttft_p50_ms"] for lv in mine) / len(mine)}


def markdown(record: dict[str, Any]) -> str:
    m, runs = record["machine"], record["runs"]
    names = list(dict.fromkeys(r["server"] for r in runs))
    raws = [n for n in names if not n.startswith("ragtune")]
    lines = [
        "# Parity against raw vLLM at its best configuration",
        "",
        f"`{record['command']}` on {record['date']}: {m['cpu']}, {m['cores']} cores, the default model, "
        f"streamed chat, RAG off, {record['max_tokens']} output tokens (ignore_eos), every request its own "
        f"question; requests per level {record['levels']}. Order: {', '.join(r['server'] for r in runs)} "
        "(each raw configuration twice, around ragtune). Every server gets ragtune's engine defaults "
        "(serving_servers.engine_flags: bf16 where native, LoRA on, 32-token KV blocks on a CPU).",
        "",
        "| server | " + " | ".join(f"c={c} tok/s | c={c} TTFT p50 ms" for c in record["levels"]) + " |",
        "|---|" + "---:|---:|" * len(record["levels"]),
    ]
    for name in names:
        cells = []
        for c in record["levels"]:
            p = pooled(runs, name, c)
            cells += ["failed", ""] if p is None else [f"{p['tok_s']:.1f}", f"{p['ttft_p50_ms']:.0f}"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "| server | concurrency | best raw tok/s (config) | server / best | best raw TTFT p50 ms (config) "
        "| server / best |",
        "|---|---:|---|---:|---|---:|",
    ]
    for ours_name in (n for n in names if n.startswith("ragtune")):
        for c in record["levels"]:
            ours = pooled(runs, ours_name, c)
            raw = {n: p for n in raws if (p := pooled(runs, n, c)) is not None}
            if ours is None or not raw:
                lines.append(f"| {ours_name} | {c} | (missing) | | | |")
                continue
            fast = max(raw, key=lambda n: raw[n]["tok_s"])
            quick = min(raw, key=lambda n: raw[n]["ttft_p50_ms"])
            speed = ours["tok_s"] / raw[fast]["tok_s"]
            wait = ours["ttft_p50_ms"] / raw[quick]["ttft_p50_ms"]
            lines.append(
                f"| {ours_name} | {c} | {raw[fast]['tok_s']:.1f} ({fast}) | **{speed:.2f}x** | "
                f"{raw[quick]['ttft_p50_ms']:.0f} ({quick}) | **{wait:.2f}x** |"
            )
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
