"""`make docs-check`: run every command written in README.md and docs/*.md, compare shown output.

Every fenced block of the docs is one of these kinds, by its info string and an optional marker,
an HTML comment on the line just above the fence (invisible on GitHub, visible in the source):

    ```bash / ```sh        shell: run in one bash per block (`set -eo pipefail`)
    ```python              run with this venv's python
    ```yaml                a ragtune.yaml: loaded through the settings models (so it cannot drift)
    ```json                parsed as JSON
    ```text                not run: a diagram, a log excerpt, a sample transcript
    <!-- check: output --> the ```text block below is the output of the run block above it
    <!-- check: slow REASON -->    run only with --slow (training runs, benchmarks, make targets)
    <!-- check: serves REASON -->  starts a server: with --slow it runs until /health answers
    <!-- check: manual REASON -->  never run here (another machine: a GPU, a PostgreSQL host)

A bare ``` fence, an unknown info string or marker is an error: nothing goes unclassified.
Inside a shell block, `# -> TEXT` (continued by `#    TEXT` lines) is the output of the commands
above it since the last such comment. Output is compared after normalising ids, timestamps,
hashes, durations and whitespace; `...` in shown output stands for anything.

Blocks run in order, file by file, in one throwaway folder laid out like a fresh clone (links to
the repository's code and models/; copies of bench/, docs/ and examples/, which commands write
into; empty adapters/ and indexes/), against one live server that the check starts there first:
`ragtune demo` on the default model, on a free port (`:8000` in the docs is rewritten to it;
`ragtune chat` finds it through RAGTUNE_SERVER). Commands in running text are not run: a command
worth running goes in a block.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RUN_LANGS = {"bash": "shell", "sh": "shell", "shell": "shell", "python": "python"}
OTHER_LANGS = {"yaml": "yaml", "json": "json", "text": "text"}
MODES = ("output", "slow", "serves", "manual")
MARKER = re.compile(r"^<!--\s*check:\s*(\w+)\s*(.*?)\s*-->\s*$")
FENCE = re.compile(r"^(`{3,})(.*)$")
SERVER_USE = re.compile(r"(localhost|127\.0\.0\.1):8000|ragtune chat(?!.*--in-process)|base_url=")
SEGMENT = "__docs_check_segment__"


class DocError(ValueError):
    """A block the checker cannot classify."""


@dataclass
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    lang: str
    text: str
    kind: str  # shell | python | yaml | json | text | output
    mode: str = "run"  # run | slow | serves | manual (run blocks); check (yaml/json); none
    reason: str = ""
    expected: str | None = None  # a following output block's text
    outputs: list[tuple[str, str]] = field(default_factory=list)  # (commands, shown output) pairs

    @property
    def where(self) -> str:
        return f"{rel(self.path)}:{self.line}"

    @property
    def needs_server(self) -> bool:
        return bool(SERVER_USE.search(self.text))


def rel(path: Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def doc_files() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def parse(path: Path) -> list[Block]:
    """Every fenced block of one Markdown file, classified; DocError on anything unknown."""
    lines = path.read_text().splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m or "`" in m.group(2):  # CommonMark: no backtick in a backtick fence's info string
            i += 1
            continue
        ticks, info = m.group(1), m.group(2).strip()
        end = next(
            (j for j in range(i + 1, len(lines)) if lines[j].startswith(ticks) and not lines[j].strip("`")),
            None,
        )
        where = f"{rel(path)}:{i + 1}"
        if end is None:
            raise DocError(f"{where}: unclosed fence")
        marker = MARKER.match(lines[i - 1]) if i else None
        mode, reason = (marker.group(1), marker.group(2)) if marker else ("run", "")
        lang = info.split()[0] if info else ""
        text = "\n".join(lines[i + 1 : end])
        if mode not in ("run", *MODES):
            raise DocError(f"{where}: unknown marker 'check: {mode}' (one of {', '.join(MODES)})")
        if lang in RUN_LANGS:
            if mode == "output":
                raise DocError(f"{where}: an output block is ```text")
            if mode in ("slow", "serves", "manual") and not reason:
                raise DocError(f"{where}: 'check: {mode}' needs a reason the reader can see")
            block = Block(path, i + 1, lang, text, RUN_LANGS[lang], mode, reason)
            if block.kind == "shell":
                block.outputs = shown_outputs(text)
        elif lang in OTHER_LANGS:
            kind = OTHER_LANGS[lang]
            if mode == "output":
                if kind != "text":
                    raise DocError(f"{where}: an output block is ```text")
                previous = blocks[-1] if blocks else None
                if previous is None or previous.kind not in ("shell", "python"):
                    raise DocError(f"{where}: an output block follows the block whose output it is")
                previous.expected = text
                kind = "output"
            elif mode != "run":
                raise DocError(f"{where}: 'check: {mode}' is for shell and python blocks")
            block = Block(path, i + 1, lang, text, kind, "check" if kind in ("yaml", "json") else "none")
        else:
            known = ", ".join([*RUN_LANGS, *OTHER_LANGS])
            raise DocError(f"{where}: a fence without a known language ({info or 'none'}; one of {known})")
        blocks.append(block)
        i = end + 1
    return blocks


def shown_outputs(text: str) -> list[tuple[str, str]]:
    """(commands, output) for each `# -> ...` comment of a shell block."""
    pairs: list[tuple[str, str]] = []
    commands: list[str] = []
    shown: list[str] | None = None
    for line in [*text.splitlines(), ""]:
        stripped = line.strip()
        if stripped.startswith("# -> "):
            if shown is not None:
                pairs.append(("\n".join(commands), "\n".join(shown)))
                commands = []
            shown = [stripped[5:]]
        elif shown is not None and stripped.startswith("#  "):
            shown.append(stripped[1:].strip())
        else:
            if shown is not None:
                pairs.append(("\n".join(commands), "\n".join(shown)))
                commands, shown = [], None
            commands.append(line)
    return pairs


# --- links ----------------------------------------------------------------------------------------

LINK = re.compile(r"\]\(([^)\s]+)\)")


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.S | re.M)
    return {anchor(m.group(1)) for m in re.finditer(r"^#+\s+(.*)$", text, re.M)}


def broken_links(path: Path) -> list[str]:
    """Relative links of one page whose file, or heading, does not exist."""
    broken = []
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.S | re.M)
    for m in LINK.finditer(text):
        target = m.group(1)
        if re.match(r"^[a-z]+:", target):
            continue  # http(s), mailto: not checked here
        file, _, frag = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        if not dest.exists():
            broken.append(f"{rel(path)}: link to a missing file: {target}")
        elif frag and dest.suffix == ".md" and frag not in anchors(dest):
            broken.append(f"{rel(path)}: link to a missing heading: {target}")
    return broken


# --- comparing output ---------------------------------------------------------------------------

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
NORMALISE = [
    (re.compile(r"\b(chatcmpl|cmpl|req)-[A-Za-z0-9-]+"), r"\1-ID"),
    (re.compile(r'"(created|loaded_at|created_at)":\s*[0-9.]+'), r'"\1": 0'),
    (re.compile(r"\b\d{4}-\d\d-\d\d[T ]\d\d:\d\d(:\d\d(\.\d+)?)?(Z|[+-]\d\d:?\d\d)?"), "TIMESTAMP"),
    (re.compile(r"\b[0-9a-f]{12,}\b"), "HEX"),
    (re.compile(r"\b\d+(\.\d+)?\s?(ms|s)\b"), "DURATION"),
    (re.compile(r"\s+"), " "),
    (re.compile(r"\s*([\[\]{}:,])\s*"), r"\1"),
]


def normalise(text: str) -> str:
    text = ANSI.sub("", text)
    for pattern, repl in NORMALISE:
        text = pattern.sub(repl, text)
    return text.strip()


def matches(shown: str, actual: str) -> bool:
    parts = [re.escape(normalise(p)) for p in normalise(shown).split("...")]
    return re.fullmatch(".*?".join(parts), normalise(actual), re.DOTALL) is not None


# --- the place blocks run in ---------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Workspace:
    """A throwaway folder laid out like a fresh clone after `make install` and the model import."""

    def __init__(self, root: Path, port: int, *, link: bool = True):
        self.root = root
        self.port = port
        keep_out = {"adapters", "indexes", "ragtune.yaml", ".git", "build"}
        copied = {"bench", "docs", "examples"}  # commands in the docs write there (results, data, pictures)
        for entry in REPO.iterdir() if link else ():
            if entry.name in copied:
                shutil.copytree(entry, root / entry.name, symlinks=True)
            elif entry.name not in keep_out:
                (root / entry.name).symlink_to(entry)
        for name in ("adapters", "indexes"):
            (root / name).mkdir(exist_ok=True)
        # A shell of its own: no ragtune settings, no make variables of the `make docs-check` above.
        drop = ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAGTUNE_") and k not in drop}
        env.update(
            PATH=f"{REPO / '.venv' / 'bin'}:{env.get('PATH', '')}",
            VIRTUAL_ENV=str(REPO / ".venv"),
            HF_HUB_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
            TOKENIZERS_PARALLELISM="false",
            VLLM_CPU_KVCACHE_SPACE="1",
            RAGTUNE_SERVER=f"http://127.0.0.1:{port}",
            COLUMNS="100",
            NO_COLOR="1",
            DOCS_CHECK_INSIDE="1",
        )
        self.env = env
        self.server: subprocess.Popen[bytes] | None = None

    def text(self, block_text: str, port: int | None = None) -> str:
        port = port or self.port
        text = re.sub(r"(localhost|127\.0\.0\.1):8000\b", rf"\g<1>:{port}", block_text)
        # Data sets the docs find beside the clone (../shared/data) are beside the repository.
        return text.replace("../shared/", f"{REPO.parent}/shared/")

    def start_server(self, timeout: float = 900) -> None:
        log = (self.root / "server.log").open("w")
        self.server = subprocess.Popen(
            ["ragtune", "demo", "--port", str(self.port)],
            cwd=self.root,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_healthy(self.server, self.port, self.root / "server.log", timeout)

    def stop_server(self) -> None:
        if self.server is not None:
            stop(self.server)
            self.server = None


def healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def wait_healthy(proc: subprocess.Popen[bytes], port: int, log: Path, timeout: float) -> None:
    deadline = time.time() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        if healthy(port):
            return
        if time.time() > deadline:
            raise RuntimeError(
                f"the server was not healthy after {timeout:.0f} s:\n{log.read_text()[-3000:]}"
            )
        time.sleep(1)


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group (the server's engine dies with it), SIGKILL what is left."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


# --- running blocks ------------------------------------------------------------------------------


@dataclass
class Result:
    block: Block
    status: str  # ok | FAIL | skipped
    seconds: float = 0.0
    detail: str = ""


def run_group(cmd: list[str], ws: Workspace, timeout: float) -> subprocess.CompletedProcess[str]:
    """Run a block in a process group of its own: past its time, the whole group is killed
    (a training run or server it started included), not only the shell."""
    proc = subprocess.Popen(
        cmd,
        cwd=ws.root,
        env=ws.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def run_shell(ws: Workspace, block: Block, timeout: float) -> tuple[bool, str]:
    """Run one shell block; with `# ->` outputs, print a separator after each commented part."""
    lines = []
    for line in ws.text(block.text).splitlines():
        if line.strip().startswith("# -> "):  # the output of the commands above ends here
            lines.append(f"echo {SEGMENT}")
        lines.append(line)
    script = "\n".join(lines)
    proc = run_group(["bash", "-c", "set -eo pipefail\n" + script], ws, timeout)
    out = proc.stdout
    if proc.returncode != 0:
        return (
            False,
            f"exit status {proc.returncode}\n--- stdout\n{out[-3000:]}\n--- stderr\n{proc.stderr[-3000:]}",
        )
    if block.outputs:
        got = out.split(SEGMENT + "\n")
        for (cmd, shown), actual in zip(block.outputs, got, strict=False):
            if not matches(shown, actual):
                return (
                    False,
                    f"output differs after:\n{cmd.strip()}\n--- shown\n{shown}\n--- got\n{actual.strip()}",
                )
    if block.expected is not None and not matches(block.expected, out):
        return (
            False,
            f"output differs\n--- shown\n{block.expected}\n--- got\n{out.strip()}"
            f"\n--- stderr\n{proc.stderr[-1500:]}",
        )
    return True, ""


def run_python(ws: Workspace, block: Block, timeout: float) -> tuple[bool, str]:
    script = ws.root / f"block-{block.path.stem}-{block.line}.py"
    script.write_text(ws.text(block.text))
    proc = run_group([str(REPO / ".venv" / "bin" / "python"), script.name], ws, timeout)
    if proc.returncode != 0:
        return False, f"exit status {proc.returncode}\n{proc.stderr[-3000:]}"
    if block.expected is not None and not matches(block.expected, proc.stdout):
        return False, f"output differs\n--- shown\n{block.expected}\n--- got\n{proc.stdout.strip()}"
    return True, ""


def run_serves(ws: Workspace, block: Block, timeout: float) -> tuple[bool, str]:
    """A block that starts a server: run it on another free port until /health answers, then stop."""
    port = free_port()
    script = ws.text(block.text, port)
    script = re.sub(r"\bPORT=\d+", f"PORT={port}", script)
    script = re.sub(r"--port \d+", f"--port {port}", script)
    env = {**ws.env, "RAGTUNE_SERVING__PORT": str(port)}
    log = ws.root / f"serves-{block.line}.log"
    with log.open("w") as fh:
        proc = subprocess.Popen(
            ["bash", "-c", "set -eo pipefail\n" + script],
            cwd=ws.root,
            env=env,
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_healthy(proc, port, log, timeout)
        return True, ""
    except RuntimeError as exc:
        return False, str(exc)
    finally:
        stop(proc)


def check_yaml(block: Block) -> tuple[bool, str]:
    import yaml

    from ragtune.serving.settings import SettingsError, load_settings

    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as fh:
        fh.write(block.text)
    try:
        load_settings(Path(fh.name))
        return True, ""
    except (SettingsError, ValueError, yaml.YAMLError) as exc:
        return False, f"{type(exc).__name__}: {exc}"
    finally:
        os.unlink(fh.name)


def check_json(block: Block) -> tuple[bool, str]:
    try:
        json.loads(block.text)
        return True, ""
    except ValueError as exc:
        return False, f"not JSON: {exc}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slow", action="store_true", help="also run blocks marked slow or serves")
    ap.add_argument("--list", action="store_true", help="list every block and how it is checked; run nothing")
    ap.add_argument(
        "--only", default=None, help="only files whose path holds this, or one block: README.md:22"
    )
    ap.add_argument("--timeout", type=float, default=600, help="seconds one block may take")
    ap.add_argument("--slow-timeout", type=float, default=7200, help="seconds one slow block may take")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (its path is printed)")
    ap.add_argument("--workdir", type=Path, help="work in this folder (kept); made like a clone if new")
    ap.add_argument("--port", type=int, help="use the server already healthy on this port (started there)")
    args = ap.parse_args(argv)
    if os.environ.get("DOCS_CHECK_INSIDE") and not args.list:
        print("docs-check: run by a docs-check block: not again (it would start a second server)")
        return 0

    try:
        blocks = [b for p in doc_files() for b in parse(p)]
        if args.only:  # a file (docs/walkthrough) or one block (README.md:22)
            blocks = [
                b for b in blocks if b.where == args.only or (":" not in args.only and args.only in b.where)
            ]
    except DocError as exc:
        print(f"docs-check: {exc}", file=sys.stderr)
        return 2
    links = [b for p in doc_files() for b in broken_links(p)]
    if links:
        print("docs-check: " + "\n  ".join(["broken links:", *links]), file=sys.stderr)
        return 2
    if args.list:
        for b in blocks:
            note = f" ({b.reason})" if b.reason else ""
            print(f"{b.where:28} {b.kind:7} {b.mode}{note}")
        return 0

    def selected(b: Block) -> bool:
        return b.mode == "run" or (args.slow and b.mode in ("slow", "serves"))

    runnable = [b for b in blocks if b.kind in ("shell", "python")]
    root = args.workdir or Path(tempfile.mkdtemp(prefix="ragtune-docs-check-"))
    if args.workdir:
        args.keep = True
        fresh = not root.exists() or not any(root.iterdir())
        root.mkdir(parents=True, exist_ok=True)
    ws = Workspace(root, args.port or free_port(), link=not args.workdir or fresh)
    reuse = args.port is not None and healthy(args.port)
    results: list[Result] = []
    started = time.time()
    try:
        if not reuse and any(selected(b) and b.needs_server for b in runnable):
            t0 = time.time()
            print(f"docs-check: starting `ragtune demo` in {root} on port {ws.port} ...", flush=True)
            ws.start_server()
            print(f"docs-check: server ready in {time.time() - t0:.0f} s", flush=True)
        for b in blocks:
            if b.kind in ("text", "output"):
                continue
            if b.kind in ("yaml", "json"):
                ok, detail = check_yaml(b) if b.kind == "yaml" else check_json(b)
                results.append(Result(b, "ok" if ok else "FAIL", 0.0, detail))
                if not ok:
                    print(f"FAIL    {b.where:28} {b.kind}\n        {detail}", flush=True)
                continue
            if not selected(b):
                results.append(Result(b, "skipped", 0.0, f"{b.mode}: {b.reason}"))
                continue
            t0 = time.time()
            limit = args.timeout if b.mode == "run" else args.slow_timeout
            try:
                if b.mode == "serves":
                    ok, detail = run_serves(ws, b, limit)
                elif b.kind == "shell":
                    ok, detail = run_shell(ws, b, limit)
                else:
                    ok, detail = run_python(ws, b, limit)
            except subprocess.TimeoutExpired:
                ok, detail = False, f"still running after {limit:.0f} s"
            r = Result(b, "ok" if ok else "FAIL", time.time() - t0, detail)
            results.append(r)
            print(f"{r.status:7} {b.where:28} {b.kind:6} {r.seconds:6.1f} s", flush=True)
            if not ok:
                print("        " + detail.replace("\n", "\n        "), flush=True)
    finally:
        ws.stop_server()
        if args.keep:
            print(f"docs-check: work folder kept: {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)

    failed = [r for r in results if r.status == "FAIL"]
    skipped = [r for r in results if r.status == "skipped"]
    print(
        f"\ndocs-check: {len(blocks)} blocks in {len(doc_files())} files; "
        f"{sum(r.status == 'ok' for r in results)} ok, {len(failed)} failed, {len(skipped)} not run "
        f"(in {time.time() - started:.0f} s)"
    )
    for r in skipped:
        print(
            f"  not run: {r.block.where} {r.detail}"
            + ("" if r.block.mode == "manual" else " (--slow runs it)")
        )
    for r in failed:
        print(f"  FAILED:  {r.block.where}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
