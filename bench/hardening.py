"""Hardening benchmark: a load test and a SIGKILL crash loop (issue 10, point 6).

`python -m bench.hardening [--quick] [--seconds S] [--rounds N]` writes bench/results/hardening.json
and .md.

- load: one ragtune server on loopback (real engine, real collection); 32 concurrent RAG chats
  plus two writers (one upserting, one deleting) for a fixed time. Reports requests/s, p50/p99,
  errors, acknowledged documents lost, and chats that cited a document deleted before they began.
  The server is then SIGKILLed and its process group checked for survivors (the engine).
- crash loop: a writer process upserts batches into a collection (the server's write path,
  `Collection.upsert`) and prints each acknowledged batch; it is SIGKILLed at a random moment,
  N rounds. Reports acknowledged documents lost, SQLite integrity and processes left behind.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.machine import machine, write_result
from bench.serving_servers import base_env, free_port

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
MODEL = "kb"  # a profile: base model + retrieval from collection kb
TOPICS = ["granite", "tides", "lighthouse", "harbour", "ferries", "storms", "beacons", "charts"]


def doc(i: int, prefix: str = "d") -> dict[str, Any]:
    topic = TOPICS[i % len(TOPICS)]
    return {
        "id": f"{prefix}{i}",
        "text": f"Note {i} on {topic}: the {topic} log entry number {i} was checked.",
    }


def group_left(pgid: int, wait_s: float = 30.0) -> int:
    """Live processes still in the group after `wait_s` (then killed); zombies are dead already
    (on a loaded machine PID 1 may take a while to reap them)."""
    deadline = time.time() + wait_s
    while True:
        out = subprocess.run(
            ["ps", "-o", "pid=,stat=", "-g", str(pgid)], capture_output=True, text=True
        ).stdout
        alive = [line.split()[0] for line in out.splitlines() if line.split() and "Z" not in line.split()[1]]
        if not alive or time.time() > deadline:
            break
        time.sleep(0.25)
    for pid in alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGKILL)
    return len(alive)


# -- load test ---------------------------------------------------------------------------------


def start_server(root: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    (root / "ragtune.yaml").write_text(
        f"serving:\n  profiles:\n    {MODEL}:\n      collection: kb\n      top_k: 3\n"
    )
    env = {
        **base_env(),
        "RAGTUNE_MODELS_DIR": str(REPO / "models"),
        "RAGTUNE_ADAPTERS_DIR": str(root / "adapters"),
        "RAGTUNE_INDEXES_DIR": str(root / "indexes"),
    }
    (root / "adapters").mkdir(exist_ok=True)
    log = (root / "server.log").open("w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ragtune",
            "serve",
            "--port",
            str(port),
            "--config",
            str(root / "ragtune.yaml"),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=root,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 900
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {(root / 'server.log').read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(1)
    raise RuntimeError("server not healthy after 900 s")


async def load(url: str, seconds: float, chats: int) -> dict[str, Any]:
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    acked: set[str] = set()
    deleted_at: dict[str, float] = {}
    cited_deleted = 0
    writes = 0
    stop = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=chats + 8)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as http:
        seed = [doc(i) for i in range(200)]
        for i in range(0, len(seed), 50):
            r = await http.post("/v1/collections/kb/documents", json={"documents": seed[i : i + 50]})
            r.raise_for_status()
        acked |= {d["id"] for d in seed}

        async def chat(worker: int) -> None:
            nonlocal cited_deleted
            rng = random.Random(worker)
            while time.monotonic() < stop:
                topic = rng.choice(TOPICS)
                body = {
                    "model": MODEL,
                    "messages": [{"role": "user", "content": f"What was checked about {topic}?"}],
                    "max_tokens": 16,
                    "temperature": 0,
                }
                began = time.monotonic()
                try:
                    r = await http.post("/v1/chat/completions", json=body)
                    key = str(r.status_code)
                    if r.status_code == 200:
                        for s in r.json()["sources"]:
                            when = deleted_at.get(s["document_id"])
                            if when is not None and when < began:
                                cited_deleted += 1
                except httpx.HTTPError as exc:
                    key = type(exc).__name__
                latencies.append(time.monotonic() - began)
                statuses[key] = statuses.get(key, 0) + 1

        async def upserter() -> None:
            nonlocal writes
            i = 1000
            while time.monotonic() < stop:
                batch = [doc(j, "w") for j in range(i, i + 5)]
                r = await http.post("/v1/collections/kb/documents", json={"documents": batch})
                key = f"write {r.status_code}"
                statuses[key] = statuses.get(key, 0) + 1
                if r.status_code == 200:
                    acked.update(d["id"] for d in batch)
                    writes += 1
                i += 5

        async def deleter() -> None:
            nonlocal writes
            for i in range(0, 200, 2):  # delete half the seed, one at a time
                if time.monotonic() >= stop:
                    break
                r = await http.delete(f"/v1/collections/kb/documents/d{i}")
                key = f"delete {r.status_code}"
                statuses[key] = statuses.get(key, 0) + 1
                if r.status_code == 200:
                    deleted_at[f"d{i}"] = time.monotonic()
                    writes += 1
                await asyncio.sleep(0.2)

        began = time.monotonic()
        await asyncio.gather(*(chat(w) for w in range(chats)), upserter(), deleter())
        elapsed = time.monotonic() - began
        lost = 0
        for doc_id in sorted(acked - set(deleted_at)):
            r = await http.get(f"/v1/collections/kb/documents/{doc_id}")
            lost += r.status_code != 200
    ok_chats = statuses.get("200", 0)
    errors = sum(v for k, v in statuses.items() if not (k in ("200",) or k.endswith(" 200")))
    latencies.sort()
    return {
        "seconds": round(elapsed, 1),
        "concurrent_chats": chats,
        "chats": len(latencies),
        "chats_per_s": round(ok_chats / elapsed, 2),
        "p50_s": round(statistics.median(latencies), 3) if latencies else None,
        "p99_s": round(latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], 3)
        if latencies
        else None,
        "writes": writes,
        "errors": errors,
        "statuses": statuses,
        "acknowledged_documents": len(acked),
        "acknowledged_lost": lost,
        "deleted_documents_cited": cited_deleted,
    }


# -- crash loop --------------------------------------------------------------------------------


def writer(indexes: str, round_: int) -> None:
    """The crash loop's victim: upsert batches forever, print each acknowledged batch's ids."""
    from ragtune.retrieval import Document, Library
    from ragtune.serving.settings import load_settings

    library = Library(Path(indexes), load_settings().retrieval)
    coll = library.open("kb") if "kb" in library.names() else library.create("kb")
    i = 0
    while True:
        batch = [
            Document(f"r{round_}-{j}", doc(j)["text"] + " " + "words " * (j % 50)) for j in range(i, i + 8)
        ]
        coll.upsert(batch)
        print(" ".join(d.id for d in batch), flush=True)
        i += 8


def crash_loop(rounds: int, root: Path) -> dict[str, Any]:
    indexes = root / "crash-indexes"
    acked: set[str] = set()
    left = 0
    rng = random.Random(0)
    env = {**base_env(), "PYTHONPATH": str(REPO)}
    for r in range(rounds):
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.hardening", "--writer", str(indexes), str(r)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
            cwd=REPO,
            start_new_session=True,
        )
        assert proc.stdout is not None
        first = proc.stdout.readline()  # the model is loaded and one batch is in: now kill mid-write
        acked.update(first.split())
        time.sleep(rng.uniform(0.05, 1.5))
        proc.kill()
        out, _ = proc.communicate()
        for line in out.splitlines():  # lines printed before the kill were acknowledged
            if line.endswith(tuple("0123456789")):
                acked.update(line.split())
        left += group_left(proc.pid)
    conn = sqlite3.connect(indexes / "kb" / "store.sqlite")
    integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
    stored = {row[0] for row in conn.execute("SELECT id FROM documents")}
    conn.close()
    return {
        "rounds": rounds,
        "acknowledged_documents": len(acked),
        "acknowledged_lost": len(acked - stored),
        "sqlite_integrity": integrity,
        "processes_left": left,
    }


# -- report ------------------------------------------------------------------------------------


def report(result: dict[str, Any]) -> str:
    ld, cl = result["load"], result["crash_loop"]
    return "\n".join(
        [
            "# Hardening benchmark",
            "",
            f"Command: `{result['command']}`  ",
            f"Machine: {result['machine']['cpu']}, {result['machine']['cores']} cores, "
            f"{result['machine']['mem_gib']} GiB; other processes were running (shared machine).  ",
            f"Date: {result['date']}",
            "",
            f"## Load: {ld['concurrent_chats']} concurrent RAG chats + an upserter + a deleter, "
            f"{ld['seconds']} s, loopback",
            "",
            "| chats | chats/s | p50 s | p99 s | writes | errors | acked docs | acked lost | deleted cited |",
            "|---|---|---|---|---|---|---|---|---|",
            f"| {ld['chats']} | {ld['chats_per_s']} | {ld['p50_s']} | {ld['p99_s']} | {ld['writes']} | "
            f"{ld['errors']} | {ld['acknowledged_documents']} | {ld['acknowledged_lost']} | "
            f"{ld['deleted_documents_cited']} |",
            "",
            f"Statuses: `{json.dumps(ld['statuses'], sort_keys=True)}`. After the run the server was "
            f"SIGKILLed: processes left in its group: **{result['server_sigkill_processes_left']}**.",
            "",
            f"## Crash loop: a writer SIGKILLed mid-upsert, {cl['rounds']} rounds",
            "",
            "| rounds | acked docs | acked lost | SQLite integrity | processes left |",
            "|---|---|---|---|---|",
            f"| {cl['rounds']} | {cl['acknowledged_documents']} | {cl['acknowledged_lost']} | "
            f"{cl['sqlite_integrity']} | {cl['processes_left']} |",
            "",
        ]
    )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.hardening")
    parser.add_argument("--quick", action="store_true", help="15 s of load, 5 crash rounds")
    parser.add_argument("--seconds", type=float, default=None)
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--chats", type=int, default=32)
    parser.add_argument("--writer", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.writer:
        writer(args.writer[0], int(args.writer[1]))
        return 0
    seconds = args.seconds or (15.0 if args.quick else 60.0)
    rounds = args.rounds or (5 if args.quick else 20)
    with tempfile.TemporaryDirectory(prefix="ragtune-hardening-") as tmp:
        root = Path(tmp)
        proc, url = start_server(root)
        try:
            httpx.post(f"{url}/v1/collections", json={"name": "kb"}, timeout=120).raise_for_status()
            load_result = asyncio.run(load(url, seconds, args.chats))
        finally:
            proc.kill()
            proc.wait()
            shutil.copy(root / "server.log", Path(tempfile.gettempdir()) / "ragtune-hardening-server.log")
        server_left = group_left(proc.pid)
        crash = crash_loop(rounds, root)
    result = {
        "command": "python -m bench.hardening " + " ".join(argv),
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load": load_result,
        "server_sigkill_processes_left": server_left,
        "crash_loop": crash,
    }
    write_result(RESULTS, "hardening-quick" if args.quick else "hardening", result, report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
