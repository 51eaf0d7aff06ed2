"""LoRA on vLLM's CPU path: vLLM's own torch ops against ragtune's grouped ones (serving/lora_cpu.py).

`python -m bench.lora_ops [--quick]` starts the real engine four times, one after the other, each
in its own process: vLLM's ops, ragtune's, ragtune's, vLLM's (A B B A, so drift on a shared
machine shows). Each start times the same work for the base model and for a rank-16 adapter on
every projection (random weights, the shape `make reader-adapter` trains):
- prefill-heavy: 16 concurrent requests of a ~700-token prompt (four retrieved passages' worth)
  and 16 output tokens, the shape of a RAG answer;
- decode-heavy: 16 concurrent requests of a short prompt and 64 output tokens (ignore_eos).
Every prompt differs (no prefix caching across requests). Writes bench/results/lora-ops.json and .md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.machine import machine, write_result

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
ORDER = ["vllm", "ragtune", "ragtune", "vllm"]
PASSAGE = (
    "The harbour authority publishes its timetable each spring. Ferries to the outer islands leave "
    "from the north pier every ninety minutes, and the last crossing of the day departs at 21:40. "
    "Freight is loaded at the east quay, where cranes were replaced in the last renovation. "
)


def make_adapter(base: Path, dest: Path) -> Path:
    """A rank-16 LoRA on every projection with random weights (it changes the output)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    peft_model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=targets))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.02)
    peft_model.save_pretrained(dest)
    return dest


async def run_batch(engine: Any, prompts: list[list[int]], tokens: int, adapter: Any) -> float:
    from ragtune.serving.engine import SamplingOptions
    from ragtune.serving.responses import new_id

    options = SamplingOptions(max_tokens=tokens, temperature=0.0, ignore_eos=True)

    async def one(ids: list[int]) -> None:
        async for _ in engine.generate(ids, options, new_id("bench"), adapter):
            pass

    started = time.perf_counter()
    await asyncio.gather(*(one(p) for p in prompts))
    return time.perf_counter() - started


async def measure(ops: str, adapter_dir: Path, quick: bool) -> dict[str, Any]:
    """One engine start with `ops` ("vllm" or "ragtune") in this process."""
    from transformers import AutoTokenizer

    from ragtune.serving.engine import AdapterRef, VllmEngine
    from ragtune.serving.settings import load_settings

    settings = load_settings(
        engine={
            "dtype": "float32",
            "enable_lora": True,
            "max_lora_rank": 16,
            "cpu_lora_ops": ops == "ragtune",
        }
    )
    tok = AutoTokenizer.from_pretrained(settings.base_model_path)
    n = 8 if quick else 16

    def chat(text: str) -> list[int]:
        rendered = tok.apply_chat_template(
            [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
        )
        return tok.encode(rendered, add_special_tokens=False)

    long = [chat(f"Request {i}. " + PASSAGE * 12 + "When does the last ferry leave?") for i in range(n)]
    short = [chat(f"Request {i}: name a harbour in Europe.") for i in range(n)]
    engine = VllmEngine(settings.base_model_path, settings.engine)
    ref = AdapterRef(name="bench", version=1, path=adapter_dir)
    out: dict[str, Any] = {"ops": ops, "requests": n, "prompt_tokens": len(long[0])}
    try:
        await engine.add_adapter(ref)
        await run_batch(engine, short[:2], 4, ref)  # warm both paths
        await run_batch(engine, short[:2], 4, None)
        for label, adapter in (("base", None), ("adapter", ref)):
            out[f"{label}_prefill_s"] = round(await run_batch(engine, long, 16, adapter), 2)
            out[f"{label}_decode_s"] = round(await run_batch(engine, short, 64, adapter), 2)
    finally:
        engine.shutdown()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="8 requests a batch instead of 16")
    parser.add_argument("--one", choices=["vllm", "ragtune"], help=argparse.SUPPRESS)
    parser.add_argument("--adapter", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(asyncio.run(measure(args.one, args.adapter, args.quick))))
        return

    from ragtune.serving.settings import load_settings

    started = time.perf_counter()
    runs = []
    with tempfile.TemporaryDirectory(prefix="ragtune-bench-") as tmp:
        adapter = make_adapter(load_settings().base_model_path, Path(tmp) / "adapter")
        for ops in ORDER:
            cmd = [sys.executable, "-m", "bench.lora_ops", "--one", ops, "--adapter", str(adapter)]
            cmd += ["--quick"] if args.quick else []
            done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise SystemExit(f"{ops} run failed:\n{done.stderr[-3000:]}")
            runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(runs[-1], flush=True)
    record = {
        "command": "python -m bench.lora_ops" + (" --quick" if args.quick else ""),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "wall_s": round(time.perf_counter() - started, 1),
        "machine": machine() | {"loadavg_after": [round(x, 2) for x in os.getloadavg()]},
        "runs": runs,
    }
    write_result(RESULTS, "lora-ops", record, markdown(record))


def markdown(record: dict[str, Any]) -> str:
    m = record["machine"]
    lines = [
        "# LoRA on vLLM's CPU path: vLLM's torch ops against ragtune's grouped ops",
        "",
        f"`{record['command']}` on {record['date']}: {m['cpu']}, {m['cores']} cores, engine float32, "
        f"executor uni; load average {m['loadavg_after']} at the end. Seconds for one batch of "
        f"{record['runs'][0]['requests']} concurrent requests (lower is better); runs in A B B A order.",
        "",
        "| run | ops | prefill batch, base | prefill batch, adapter | adapter / base | decode batch, base "
        "| decode batch, adapter | adapter / base |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for i, r in enumerate(record["runs"], start=1):
        lines.append(
            f"| {i} | {r['ops']} | {r['base_prefill_s']} | {r['adapter_prefill_s']} | "
            f"{r['adapter_prefill_s'] / r['base_prefill_s']:.2f} | {r['base_decode_s']} | "
            f"{r['adapter_decode_s']} | {r['adapter_decode_s'] / r['base_decode_s']:.2f} |"
        )
    by = {ops: [r for r in record["runs"] if r["ops"] == ops] for ops in ("vllm", "ragtune")}

    def mean(ops: str, key: str) -> float:
        return sum(r[key] for r in by[ops]) / len(by[ops])

    lines += [
        "",
        f"Adapter batch, vLLM's ops / ragtune's (means of the two runs each): prefill "
        f"{mean('vllm', 'adapter_prefill_s') / mean('ragtune', 'adapter_prefill_s'):.1f}x, decode "
        f"{mean('vllm', 'adapter_decode_s') / mean('ragtune', 'adapter_decode_s'):.1f}x faster with "
        "ragtune's. "
        f"Prompts of {record['runs'][0]['prompt_tokens']} tokens; 16 output tokens after a long "
        "prompt, 64 after a short one.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
