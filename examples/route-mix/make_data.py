"""Build the `model: auto` routing set: ten domains' documents and a mixed question set.

    python examples/route-mix/make_data.py OUT_DIR

Domains (each a collection behind a profile, with a one-sentence description in domains.json):
`demo` is the demo's own Northwind Rail handbook (examples/house-style/docs.jsonl, what `ragtune
demo` indexes); `world` is examples/world-qa; the other eight are cut from documentation that
Debian packages install under /usr/share/doc: the Node.js API reference (nodejs, MIT), the
Valgrind manual (valgrind, GFDL), GnuPG's notes (gnupg), pip's docs (python3-pip), the bzip2
manual, util-linux's notes, Git's release notes (git) and GDB's NEWS (gdb). Documents are
sections of at most MAX_CHARS characters.

Questions (questions.jsonl: id, text, domain or null for off-domain, split): the demo's are the
user questions of examples/house-style/questions.jsonl (its off-topic ones are off-domain here,
but for a capital city's, which is `world`'s); Valgrind's are its FAQ's questions (the
FAQ itself is not in the corpus) and written ones; Node.js's and the off-domain ones are written
(questions-written.jsonl). Every question is in `dev` (about a third, by a hash of its text: the
thresholds were calibrated there) or `test` (reported). The other domains have no questions:
they are there to be mistaken for.
"""

from __future__ import annotations

import gzip
import hashlib
import html
import json
import re
import sys
from html.parser import HTMLParser
from pathlib import Path

HERE = Path(__file__).resolve().parent
EXAMPLES = HERE.parent
DOC = Path("/usr/share/doc")
MAX_CHARS = 1500
NODE_MODULES = [
    "fs",
    "path",
    "events",
    "stream",
    "http",
    "child_process",
    "buffer",
    "process",
    "url",
    "os",
    "timers",
    "worker_threads",
    "readline",
    "net",
    "zlib",
    "cluster",
    "dns",
]
VALGRIND_PAGES = [
    "quick-start",
    "manual-intro",
    "manual-core",
    "manual-core-adv",
    "mc-manual",
    "cg-manual",
    "cl-manual",
    "hg-manual",
    "drd-manual",
    "ms-manual",
    "dh-manual",
]


def read(path: Path) -> str:
    data = path.read_bytes()
    return (gzip.decompress(data) if path.suffix == ".gz" else data).decode("utf-8", "replace")


def sections(title: str, text: str, pattern: str) -> list[tuple[str, str]]:
    """(title, body) for each part of `text` between lines matching `pattern` (a heading)."""
    out: list[tuple[str, str]] = []
    head, body = title, []
    for line in text.splitlines():
        m = re.match(pattern, line)
        if m:
            out.append((head, "\n".join(body)))
            head, body = f"{title}: {m.group(1).strip()}", []
        else:
            body.append(line)
    out.append((head, "\n".join(body)))
    return [(h, b.strip()) for h, b in out if len(b.strip()) > 80]


def clean_md(text: str) -> str:
    text = re.sub(r"<!--.*?-->", "", text, flags=re.S)
    text = re.sub(r"\[([^\]]+)\]\[[^\]]*\]", r"\1", text)  # [text][ref] -> text
    text = re.sub(r"\[([^\]]+)\]\([^)]*\)", r"\1", text)
    return re.sub(r"\n{3,}", "\n\n", text)


class _Text(HTMLParser):
    """Text of an HTML page with its h1-h3 headings marked as '## ' lines."""

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self.skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style"):
            self.skip += 1
        elif tag in ("h1", "h2", "h3"):
            self.parts.append("\n## ")
        elif tag in ("p", "div", "br", "li", "pre", "tr"):
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style"):
            self.skip -= 1
        elif tag in ("h1", "h2", "h3"):
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self.skip:
            self.parts.append(data)


def html_text(raw: str) -> str:
    parser = _Text()
    parser.feed(raw)
    text = html.unescape("".join(parser.parts))
    text = re.sub(r"## \s+", "## ", text)
    text = re.sub(r"[ \t]+", " ", text)
    return re.sub(r"\n\s*\n+", "\n\n", text)


def docs_of(name: str, parts: list[tuple[str, str]]) -> list[dict[str, str]]:
    return [
        {"id": f"{name}-{i}", "title": title, "text": body[:MAX_CHARS]}
        for i, (title, body) in enumerate(parts)
    ]


def paragraphs(title: str, text: str) -> list[tuple[str, str]]:
    """Consecutive paragraphs of a plain-text file, grouped up to MAX_CHARS."""
    out, cur = [], ""
    for para in re.split(r"\n\s*\n", text):
        if cur and len(cur) + len(para) > MAX_CHARS:
            out.append((title, cur))
            cur = ""
        cur = f"{cur}\n\n{para}" if cur else para
    if cur:
        out.append((title, cur))
    return [(t, b.strip()) for t, b in out if len(b.strip()) > 80]


def build_corpora() -> dict[str, list[dict[str, str]]]:
    corpora: dict[str, list[dict[str, str]]] = {}
    demo = [json.loads(line) for line in (EXAMPLES / "house-style" / "docs.jsonl").read_text().splitlines()]
    corpora["demo"] = [{"id": d["id"], "title": d.get("title", ""), "text": d["text"]} for d in demo]
    world = [json.loads(line) for line in (EXAMPLES / "world-qa" / "corpus.jsonl").read_text().splitlines()]
    corpora["world"] = [{"id": d["_id"], "title": d.get("title", ""), "text": d["text"]} for d in world]
    node: list[tuple[str, str]] = []
    for module in NODE_MODULES:
        text = clean_md(read(DOC / "nodejs" / "api" / f"{module}.md"))
        node += sections(f"Node.js {module}", text, r"^#{2,3} (.+)$")
    corpora["nodejs"] = docs_of("nodejs", node)
    valgrind: list[tuple[str, str]] = []
    for page in VALGRIND_PAGES:
        text = html_text(read(DOC / "valgrind" / "html" / f"{page}.html"))
        valgrind += sections("Valgrind", text, r"^## (.+)$")
    corpora["valgrind"] = docs_of("valgrind", valgrind)
    gnupg: list[tuple[str, str]] = []
    for f in ("README.gz", "DETAILS.gz", "KEYSERVER", "OpenPGP.gz", "NEWS.gz"):
        gnupg += paragraphs(f"GnuPG {f.removesuffix('.gz')}", read(DOC / "gnupg" / f))
    corpora["gnupg"] = docs_of("gnupg", gnupg[:400])
    pip: list[tuple[str, str]] = []
    for f in sorted((DOC / "python3-pip" / "html").rglob("*")):
        if f.is_file() and f.name.split(".")[-2 if f.suffix == ".gz" else -1] in ("md", "rst"):
            name = f.name.split(".")[0]
            pip += sections(f"pip {name}", read(f), r"^#{1,3} (.+)$") or paragraphs(f"pip {name}", read(f))
    corpora["pip"] = docs_of("pip", pip)
    corpora["bzip2"] = docs_of(
        "bzip2", sections("bzip2", html_text(read(DOC / "bzip2" / "manual.html")), r"^## (.+)$")
    )
    util: list[tuple[str, str]] = []
    for f in sorted((DOC / "util-linux").glob("*.txt")):
        util += paragraphs(f"util-linux {f.stem}", read(f))
    corpora["util-linux"] = docs_of("util-linux", util)
    notes = sorted(
        (DOC / "git" / "RelNotes").glob("2.*.txt"), key=lambda p: [int(x) for x in p.stem.split(".")]
    )
    git: list[tuple[str, str]] = []
    for f in notes[-12:]:
        git += paragraphs(f"Git {f.stem} release notes", read(f))
    corpora["git"] = docs_of("git", git)
    corpora["gdb"] = docs_of("gdb", paragraphs("GDB NEWS", read(DOC / "gdb" / "NEWS.gz"))[:300])
    return corpora


def valgrind_faq() -> list[str]:
    text = read(DOC / "valgrind" / "FAQ.txt.gz")
    out = []
    for m in re.finditer(r"^\d+\.\d+\. (.+?)\s*$((?:\n.+)*)", text, flags=re.M):
        question = " ".join([m.group(1), *m.group(2).split("\n")]).strip()
        question = re.sub(r"\s+", " ", question)
        out.append(re.sub(r"\?+$", "?", question.split("? ")[0] + ("?" if "?" in question else "")))
    return out


def split_of(text: str) -> str:
    return "dev" if int(hashlib.sha256(text.encode()).hexdigest(), 16) % 3 == 0 else "test"


def build_questions() -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    seen = set()

    def add(qid: str, text: str, domain: str | None) -> None:
        if text in seen:
            return
        seen.add(text)
        rows.append({"id": qid, "text": text, "domain": domain, "split": split_of(text)})

    for line in (EXAMPLES / "house-style" / "questions.jsonl").read_text().splitlines():
        row = json.loads(line)
        user = [m["content"] for m in row["messages"] if m["role"] == "user"][-1]
        if row.get("document_id"):
            add(f"demo-{row['document_id']}", user, "demo")
        else:  # the demo's off-topic questions; a country's capital is the `world` domain's
            add(f"demo-off-{len(rows)}", user, "world" if user.startswith("What is the capital of") else None)
    for i, q in enumerate(valgrind_faq()):
        add(f"valgrind-faq-{i}", q, "valgrind")
    for line in (HERE / "questions-written.jsonl").read_text().splitlines():
        row = json.loads(line)
        add(row["id"], row["text"], row["domain"])
    return rows


def main() -> None:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    corpora = build_corpora()
    for name, docs in corpora.items():
        (out / name).mkdir(exist_ok=True)
        with (out / name / "corpus.jsonl").open("w") as f:
            f.writelines(json.dumps(d) + "\n" for d in docs)
    domains = json.loads((HERE / "domains.json").read_text())
    assert set(domains) == set(corpora), set(domains) ^ set(corpora)
    (out / "domains.json").write_text(json.dumps(domains, indent=2) + "\n")
    questions = build_questions()
    with (out / "questions.jsonl").open("w") as f:
        f.writelines(json.dumps(q) + "\n" for q in questions)
    counts = {n: len(d) for n, d in corpora.items()}
    by = {}
    for q in questions:
        key = f"{q['domain'] or 'off-domain'}/{q['split']}"
        by[key] = by.get(key, 0) + 1
    print(f"{out}: documents {counts}; questions {dict(sorted(by.items()))}")


if __name__ == "__main__":
    main()
