"""schemathesis at volume: every operation of the OpenAPI schema, no response >= 500 (issue 10).

`python -m bench.schema [--quick] [--examples N]` runs tests/test_hardening_schema.py (the app
with the echo engine, a real library and real stores in a temporary folder; the real engine's
own bad-input cases are tests/test_hardening_live.py's) with N generated requests per operation
instead of CI's 25, and writes bench/results/schema.json and .md with the status counts.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from bench.machine import machine, write_result

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
LINE = re.compile(r"schemathesis: (\d+) requests, statuses (\{.*\})")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.schema")
    parser.add_argument("--quick", action="store_true", help="100 examples per operation")
    parser.add_argument("--examples", type=int, default=None, help="per operation (default 1200)")
    args = parser.parse_args(argv)
    examples = args.examples or (100 if args.quick else 1200)
    env = {**os.environ, "SCHEMATHESIS_EXAMPLES": str(examples)}
    cmd = [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider"]
    cmd.append("tests/test_hardening_schema.py")
    started = time.time()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    seconds = time.time() - started
    found = LINE.search(proc.stdout)
    if not found:
        print(proc.stdout[-4000:], proc.stderr[-4000:], file=sys.stderr)
        return 1
    statuses = {int(k): v for k, v in ast.literal_eval(found.group(2)).items()}
    result = {
        "command": "python -m bench.schema " + " ".join(argv),
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "examples_per_operation": examples,
        "requests": int(found.group(1)),
        "statuses": statuses,
        "server_errors": sum(v for k, v in statuses.items() if k >= 500),
        "seconds": round(seconds, 1),
        "passed": proc.returncode == 0,
    }

    md = "\n".join(
        [
            "# schemathesis over the whole OpenAPI schema",
            "",
            f"Command: `{result['command']}`  ",
            f"Machine: {result['machine']['cpu']}, {result['machine']['cores']} cores, "
            f"{result['machine']['mem_gib']} GiB  ",
            f"Date: {result['date']}, {result['seconds']} s",
            "",
            "The app with the echo engine (tests/doubles.py), a real library, SQLite store and FAISS "
            "index; positive and negative cases for every operation.",
            "",
            "| examples per operation | requests | responses >= 500 | statuses |",
            "|---|---|---|---|",
            f"| {examples} | {result['requests']} | **{result['server_errors']}** | "
            f"`{json.dumps(statuses, sort_keys=True)}` |",
            "",
        ]
    )
    write_result(RESULTS, "schema-quick" if args.quick else "schema", result, md)
    return 0 if proc.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
