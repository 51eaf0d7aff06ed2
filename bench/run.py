"""`make bench`: every benchmark in turn, each writing bench/results/<name>.json and .md.

Each runs in its own process (one vLLM engine or training run at a time on a small machine).
`python -m bench.run [--quick] [NAME ...]`; names: retrieval, serving, training, hardening, schema, engines,
parity, prefix_cache, merge (merge needs the demo's adapter: `make demo-adapter`).
"""

from __future__ import annotations

import subprocess
import sys
import time

BENCHES = (
    "retrieval",
    "serving",
    "training",
    "hardening",
    "schema",
    "engines",
    "parity",
    "prefix_cache",
    "merge",
)


def main(argv: list[str]) -> int:
    quick = "--quick" in argv
    names = [a for a in argv if not a.startswith("-")] or list(BENCHES)
    unknown = sorted(set(names) - set(BENCHES))
    if unknown:
        print(f"unknown benchmark(s) {unknown}; choose from {list(BENCHES)}", file=sys.stderr)
        return 2
    failed = []
    for name in names:
        cmd = [sys.executable, "-m", f"bench.{name}", *(["--quick"] if quick else [])]
        print(f"== {' '.join(cmd)}", flush=True)
        started = time.time()
        code = subprocess.call(cmd)
        print(f"== {name}: exit {code} after {time.time() - started:.0f} s", flush=True)
        if code:
            failed.append(name)
    for name in names:
        print(f"results: bench/results/{name}.md")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
