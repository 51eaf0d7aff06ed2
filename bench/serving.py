"""Serving benchmark: ragtune's server vs vLLM's own OpenAI server, side by side in one run.

    .venv/bin/python -m bench.serving [--quick]

Same model, same engine arguments (ragtune's `EngineSettings` defaults), one server at a time on
a loopback port, in the order raw | ragtune | raw so slow drift of the machine's load hits both
alike (ABBA for the repeats of phase 1). Phases:

1. RAG off: output tokens/s and TTFT p50/p99 of streamed chat at concurrency 1, 8, 32.
2. RAG on (ragtune): the TTFT p50 retrieval adds at 10k chunks, concurrency 1.
3. Four rank-8 LoRA adapters round-robin vs the base model only, at concurrency 8.

Writes bench/results/serving.json (every number) and bench/results/serving.md (tables).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import serving_phases as ph
from bench.machine import cpu_model, mem_gib
from bench.serving_data import load_questions, make_adapters, make_chunks
from bench.serving_load import merge
from bench.serving_report import render_markdown, summarize_run
from bench.serving_servers import KV_CACHE_GIB, REPO, Server, ragtune, raw_vllm
from ragtune.serving.settings import EngineSettings

RESULTS = REPO / "bench" / "results"
DEFAULT_DATASET = REPO / "examples" / "disflqa"  # shipped with the repository
ADAPTERS = ["bench-a1", "bench-a2", "bench-a3", "bench-a4"]
# Question offsets per phase: each server gets the same questions, none repeats within a server.
Q_PHASE1, Q_ADAPTERS, Q_RAG = 0, 3000, 4500


@dataclass(frozen=True)
class Plan:
    repeats: int  # of phase 1, per server (ABBA order when 2)
    levels: dict[int, int]  # concurrency -> requests per repeat
    max_tokens: int
    chunks: int
    rag_requests: int  # per condition
    rag_max_tokens: int
    adapter_concurrency: int
    adapter_requests: int  # per level
    adapter_repeats: int
    adapter_max_tokens: int
    raw_adapters: bool  # phase 3 on raw vLLM too, for reference


FULL = Plan(2, {1: 8, 8: 32, 32: 64}, 64, 10_000, 30, 8, 8, 24, 2, 32, True)
QUICK = Plan(1, {1: 2, 8: 8, 32: 32}, 16, 500, 5, 4, 8, 8, 1, 16, False)


def machine() -> dict[str, Any]:
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu_model(),
        "mem_gib": mem_gib(),
        "python": platform.python_version(),
    }


def load() -> dict[str, Any]:
    one, five, fifteen = os.getloadavg()
    return {
        "at": dt.datetime.now().strftime("%H:%M:%S"),
        "load1": round(one, 2),
        "load5": round(five, 2),
        "load15": round(fifteen, 2),
    }


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        )
        return out.stdout.strip() or None
    except OSError:
        return None


def uncommitted(paths: tuple[str, ...] = ("serving", "retrieval")) -> list[str]:
    """Changed or new files in the benchmarked packages (the run measured the working tree)."""
    try:
        out = subprocess.run(
            ["git", "status", "--porcelain", *paths], cwd=REPO, capture_output=True, text=True
        )
    except OSError:
        return []
    return [ln[3:] for ln in out.stdout.splitlines()]


class Session:
    """One server's life: start, phases, stop; a failure is recorded, not raised."""

    def __init__(self, server: Server, record: dict[str, Any], label: str):
        self.server, self.label = server, label
        self.rec = record.setdefault("sessions", {}).setdefault(label, {"kind": server.kind, "load": []})

    def __enter__(self) -> Session:
        print(f"[{self.label}] starting {self.server.kind} server on :{self.server.port} ...", flush=True)
        self.rec["load"].append(load())
        self.server.start()
        self.rec["start_s"] = self.server.start_s
        print(f"[{self.label}] healthy after {self.server.start_s} s", flush=True)
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        self.rec["load"].append(load())
        self.server.stop()
        if exc is not None and isinstance(exc, Exception):
            self.rec["error"] = f"{type(exc).__name__}: {exc}"[:4000]
            print(f"[{self.label}] FAILED: {self.rec['error'][:1500]}", flush=True)
            return True
        return False


def run(plan: Plan, *, dataset: Path | None, out: Path, quick: bool, keep: bool) -> dict[str, Any]:
    engine = EngineSettings()
    settings_model = REPO / "models" / "smollm2-135m-instruct"
    models_dir, model_name = settings_model.parent, settings_model.name
    work = Path(tempfile.mkdtemp(prefix="ragtune-bench-serving-"))
    adapters_dir, indexes_dir = work / "adapters", work / "indexes"
    adapters_dir.mkdir()
    indexes_dir.mkdir()
    questions, questions_what = load_questions(dataset)
    record: dict[str, Any] = {
        "command": " ".join(["python -m bench.serving", *sys.argv[1:]]),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "git_commit": git_commit(),
        "uncommitted": uncommitted(),
        "machine": machine(),
        "plan": plan.__dict__ | {"levels": {str(k): v for k, v in plan.levels.items()}},
        "engine": engine.model_dump() | {"VLLM_CPU_KVCACHE_SPACE": KV_CACHE_GIB},
        "model": str(settings_model.relative_to(REPO)),
        "inputs": {"questions": questions_what},
        "workdir": str(work),
    }
    started = time.perf_counter()
    print(f"making {len(ADAPTERS)} rank-8 LoRA adapters in {adapters_dir} ...", flush=True)
    folders = make_adapters(settings_model, adapters_dir, ADAPTERS, rank=8)
    docs, chunks_what = make_chunks(dataset, plan.chunks)
    record["inputs"]["chunks"] = chunks_what

    def raw_server() -> Server:
        return raw_vllm(settings_model, engine, workdir=work, model_name=model_name)

    def rt_server() -> Server:
        return ragtune(
            models_dir,
            workdir=work,
            adapters_dir=adapters_dir,
            indexes_dir=indexes_dir,
            model_name=model_name,
        )

    phase1: dict[str, list[dict[int, Any]]] = {"raw": [], "ragtune": []}
    adapters_runs: dict[str, Any] = {}

    def p1(server: Server, rep: int) -> None:
        print(f"phase 1, repeat {rep + 1}/{plan.repeats}: {server.kind}", flush=True)
        q = questions.sub(Q_PHASE1 + 1000 * rep)
        ph.run(ph.warmup(server, q))
        phase1[server.kind].append(
            ph.run(ph.rag_off(server, q, levels=plan.levels, max_tokens=plan.max_tokens))
        )

    def p3(server: Server) -> None:
        print(f"phase 3: {server.kind}, 4 adapters vs base", flush=True)
        names = ph.run(ph.load_adapters(server, folders))
        adapters_runs[server.kind] = ph.run(
            ph.adapters(
                server, questions.sub(Q_ADAPTERS), names, concurrency=plan.adapter_concurrency,
                n=plan.adapter_requests, repeats=plan.adapter_repeats, max_tokens=plan.adapter_max_tokens,
            )
        )  # fmt: skip

    with Session(raw_server(), record, "raw-1") as s:
        p1(s.server, 0)
        if plan.raw_adapters and plan.repeats == 1:
            p3(s.server)
    with Session(rt_server(), record, "ragtune") as s:
        p1(s.server, 0)
        print(f"phase 2: ingest {len(docs)} chunks over HTTP, then TTFT with rag on/off", flush=True)
        record["ingest"] = ph.run(ph.ingest(s.server, docs))
        print(
            f"  ingest: {record['ingest']['seconds']} s ({record['ingest']['docs_per_s']} docs/s)", flush=True
        )
        record["rag"] = ph.run(
            ph.rag_latency(
                s.server, questions.sub(Q_RAG), n=plan.rag_requests, top_k=5, max_tokens=plan.rag_max_tokens
            )
        )
        print(
            f"  rag: {json.dumps({k: v for k, v in record['rag'].items() if not isinstance(v, dict)})}",
            flush=True,
        )
        for rep in range(1, plan.repeats):
            p1(s.server, rep)
        p3(s.server)
    if plan.repeats > 1:
        with Session(raw_server(), record, "raw-2") as s:
            for rep in range(1, plan.repeats):
                p1(s.server, rep)
            if plan.raw_adapters:
                p3(s.server)

    record["phase1_raw_repeats"] = {
        k: [{str(c): lv for c, lv in rep.items()} for rep in v] for k, v in phase1.items()
    }
    record["phase1"] = {
        kind: {str(c): merge([rep[c] for rep in reps]) for c in plan.levels}
        for kind, reps in phase1.items()
        if reps
    }
    record["adapters"] = {
        kind: {k: merge(v) | {"runs": [lv | {"ttfts_ms": None} for lv in v]} for k, v in runs.items()}
        for kind, runs in adapters_runs.items()
    }
    record["elapsed_s"] = round(time.perf_counter() - started, 1)
    record["summary"] = summarize_run(record)
    record["quick"] = quick
    if not keep:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.serving", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="small request counts: a smoke run of about 3 minutes"
    )
    parser.add_argument(
        "--dataset", type=Path, default=DEFAULT_DATASET, help="BEIR folder for questions and chunk text"
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for serving.json and serving.md")
    parser.add_argument(
        "--keep", action="store_true", help="keep the work folder (server logs, index, adapters)"
    )
    parser.add_argument("--render", type=Path, help="only re-render the Markdown of an existing serving JSON")
    args = parser.parse_args(argv)
    if args.render:
        record = json.loads(args.render.read_text())
        record["summary"] = summarize_run(record)  # derived: recomputed with the current rules
        args.render.write_text(json.dumps(record, indent=1) + "\n")
        args.render.with_suffix(".md").write_text(render_markdown(record))
        print(f"wrote {args.render.with_suffix('.md')}")
        return 0
    plan = QUICK if args.quick else FULL
    dataset = args.dataset if args.dataset and args.dataset.exists() else None
    record = run(plan, dataset=dataset, out=args.out, quick=args.quick, keep=args.keep)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "serving-quick" if args.quick else "serving"
    (args.out / f"{stem}.json").write_text(json.dumps(record, indent=1) + "\n")
    md = render_markdown(record)
    (args.out / f"{stem}.md").write_text(md)
    print(md)
    print(f"wrote {args.out / (stem + '.json')} and {args.out / (stem + '.md')} ({record['elapsed_s']} s)")
    return 0 if not any("error" in s for s in record.get("sessions", {}).values()) else 1


if __name__ == "__main__":
    sys.exit(main())
