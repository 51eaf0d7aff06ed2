"""Remote engine vs in-process, side by side in one run.

    .venv/bin/python -m bench.remote_engine [--quick] [--dataset examples/disflqa]

Both are ragtune servers with the same engine settings (ragtune's `EngineSettings` defaults):
"in-process" starts vLLM itself; "remote" has `RAGTUNE_ENGINE__URL` pointing at vLLM's own
OpenAI server started with the equal flags (bench/serving_servers.py). One configuration runs at
a time (the vLLM server only during the remote sessions), in the order in-process | remote |
remote | in-process, each answering the same questions: streamed chat, retrieval off, at
concurrency 1, 8 and 32. Writes bench/results/remote-engine.json and .md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import serving_phases as ph
from bench.serving import DEFAULT_DATASET, RESULTS, git_commit, load, machine, uncommitted
from bench.serving_data import load_questions
from bench.serving_load import merge
from bench.serving_servers import KV_CACHE_GIB, REPO, Server, ragtune, raw_vllm
from ragtune.serving.settings import EngineSettings

MODEL = REPO / "models" / "smollm2-135m-instruct"
FULL = {"levels": {1: 8, 8: 32, 32: 64}, "max_tokens": 64}
QUICK = {"levels": {1: 2, 8: 8, 32: 32}, "max_tokens": 16}


def _cpu_share(server: Server, before: dict[str, float]) -> dict[str, float]:
    after = server.cpu_seconds()
    return {k: round(after[k] - before[k], 2) for k in before if k in after}


def run(plan: dict[str, Any], *, dataset: Path | None) -> dict[str, Any]:
    engine = EngineSettings()
    work = Path(tempfile.mkdtemp(prefix="ragtune-bench-remote-"))
    (work / "adapters").mkdir()
    questions, questions_what = load_questions(dataset)
    record: dict[str, Any] = {
        "command": " ".join(["python -m bench.remote_engine", *sys.argv[1:]]),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "git_commit": git_commit(),
        "uncommitted": uncommitted(),
        "machine": machine(),
        "plan": {"levels": {str(k): v for k, v in plan["levels"].items()}, "max_tokens": plan["max_tokens"]},
        "engine": engine.model_dump() | {"VLLM_CPU_KVCACHE_SPACE": KV_CACHE_GIB},
        "inputs": {"questions": questions_what},
        "sessions": [],
    }
    runs: dict[str, list[dict[int, Any]]] = {"in-process": [], "remote": []}

    def ragtune_server(label: str, engine_url: str | None) -> Server:
        server = ragtune(
            MODEL.parent,
            workdir=work,
            adapters_dir=work / "adapters",
            indexes_dir=work / f"indexes-{label}",
            model_name=MODEL.name,
        )
        server.log = work / f"ragtune-{label}.log"
        if engine_url:
            server.env["RAGTUNE_ENGINE__URL"] = engine_url
        return server

    for i, kind in enumerate(["in-process", "remote", "remote", "in-process"]):
        label = f"{kind}-{i + 1}"
        session: dict[str, Any] = {"label": label, "load": [load()]}
        record["sessions"].append(session)
        print(f"[{label}] starting", flush=True)
        vllm = raw_vllm(MODEL, engine, workdir=work, model_name=MODEL.name) if kind == "remote" else None
        try:
            if vllm is not None:
                vllm.start()
                session["vllm_start_s"] = vllm.start_s
            server = ragtune_server(label, f"{vllm.url}/v1" if vllm else None)
            try:
                server.start()
                session["ragtune_start_s"] = server.start_s
                print(f"[{label}] ready: ragtune {server.start_s} s, vLLM {session.get('vllm_start_s')} s")
                q = questions.sub(1000 * (i // 2))  # ABBA: each pair gets the same questions
                ph.run(ph.warmup(server, q))
                before = vllm.cpu_seconds() if vllm else {}
                runs[kind].append(
                    ph.run(ph.rag_off(server, q, levels=plan["levels"], max_tokens=plan["max_tokens"]))
                )
                if vllm is not None:
                    session["vllm_cpu_s"] = _cpu_share(vllm, before)
            finally:
                server.stop()
        finally:
            if vllm is not None:
                vllm.stop()
            session["load"].append(load())
    record["levels"] = {
        kind: {str(c): merge([r[c] for r in reps]) for c in plan["levels"]} for kind, reps in runs.items()
    }
    record["ratios"] = {
        str(c): {
            "throughput": _ratio(record["levels"]["remote"][str(c)], record["levels"]["in-process"][str(c)],
                                 "throughput_tok_s"),
            "ttft_p50": _ratio(record["levels"]["remote"][str(c)], record["levels"]["in-process"][str(c)],
                               "ttft_p50_ms"),
        }
        for c in plan["levels"]
    }  # fmt: skip
    record["workdir"] = str(work)
    return record


def _ratio(a: dict[str, Any], b: dict[str, Any], key: str) -> float | None:
    return round(a[key] / b[key], 3) if a.get(key) and b.get(key) else None


def render(rec: dict[str, Any]) -> str:
    m = rec["machine"]
    lines = [
        "# Remote engine vs in-process",
        "",
        f"`{rec['command']}`, {rec['date']}, commit {rec['git_commit']}"
        + (f" (uncommitted: {', '.join(rec['uncommitted'])})" if rec["uncommitted"] else ""),
        f"Machine: {m['cpu']}, {m['nproc']} cores, {m['mem_gib']} GiB, Python {m['python']}.",
        "",
        "ragtune with vLLM in its own process vs ragtune with `RAGTUNE_ENGINE__URL` on vLLM's OpenAI "
        "server (same engine flags). One at a time, in-process | remote | remote | in-process; "
        "streamed chat, retrieval off, "
        f"{rec['plan']['max_tokens']} tokens per answer (`ignore_eos`).",
        "",
        "| concurrency | in-process tok/s | remote tok/s | ratio | TTFT p50 in-process "
        "| TTFT p50 remote | ratio |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c, r in rec["ratios"].items():
        a, b = rec["levels"]["in-process"][c], rec["levels"]["remote"][c]
        lines.append(
            f"| {c} | {a['throughput_tok_s']} | {b['throughput_tok_s']} | {r['throughput']} | "
            f"{a['ttft_p50_ms']} ms | {b['ttft_p50_ms']} ms | {r['ttft_p50']} |"
        )
    lines += ["", "Per repeat (throughput tok/s, in run order):", ""]
    for kind in ("in-process", "remote"):
        per = {c: v["throughput_per_repeat"] for c, v in rec["levels"][kind].items()}
        lines.append(f"- {kind}: {per}")
    lines += ["", "Sessions:", ""]
    for s in rec["sessions"]:
        loads = " -> ".join(str(x["load1"]) for x in s["load"])
        lines.append(
            f"- {s['label']}: ragtune start {s.get('ragtune_start_s')} s, vLLM server start "
            f"{s.get('vllm_start_s')} s, load {loads}"
            + (f", vLLM server CPU during the levels {s['vllm_cpu_s']}" if s.get("vllm_cpu_s") else "")
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a short run that checks the harness")
    parser.add_argument("--dataset", type=Path, default=DEFAULT_DATASET if DEFAULT_DATASET.exists() else None)
    args = parser.parse_args()
    started = time.perf_counter()
    rec = run(QUICK if args.quick else FULL, dataset=args.dataset)
    rec["seconds"] = round(time.perf_counter() - started)
    name = "remote-engine-quick" if args.quick else "remote-engine"
    (RESULTS / f"{name}.json").write_text(json.dumps(rec, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(render(rec))
    print(render(rec))


if __name__ == "__main__":
    main()
