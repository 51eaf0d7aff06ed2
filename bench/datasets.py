"""Test collections in BEIR layout built from data that ships inside a package.

    python -m bench.datasets pyfaq OUT_DIR [--deb FILE]

`pyfaq`: the Python FAQ (general, programming, design, library, extending, windows, GUI,
"installed") from Debian's `python3.11-doc` package, which ships the reStructuredText sources of
the Python documentation under /usr/share/doc/python3.11/html/_sources/ (PSF licence). Every
FAQ entry becomes a document: its answer, titled by its FAQ page and section (the question
itself is left out of the document); every entry whose heading is a question becomes a query
with that one answer relevant (grade 1). Entries whose heading is not a question stay in the
corpus as distractors. The package is fetched with `apt-get download` (no root needed, nothing
installed) unless `--deb` names a downloaded .deb or the files are already installed.

Writes OUT_DIR/corpus.jsonl, queries.jsonl, qrels/test.tsv and a README.md saying where they
came from.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "python3.11-doc"
SOURCES = Path("usr/share/doc/python3.11/html/_sources/faq")
PAGES = ("general", "programming", "design", "library", "extending", "windows", "gui", "installed")
ADORNMENT = re.compile(r"^([=\-~^*+#\"'`])\1{2,}\s*$")


@dataclass
class Entry:
    page: str
    section: str
    heading: str
    body: str


def clean_rst(text: str) -> str:
    """Plain text from a FAQ answer: roles and links reduced to their words, directives and
    labels dropped, code kept (it is part of the answer)."""
    out = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith(".. ") and ("::" in stripped or stripped.startswith(".. _")):
            directive = stripped[3:].split("::", 1)
            # keep the argument of content directives (".. note:: text"); drop labels and markup
            rest = directive[1].strip() if len(directive) == 2 else ""
            if rest and directive[0] in ("note", "warning", "seealso", "versionadded", "versionchanged"):
                out.append(rest)
            continue
        out.append(line)
    text = "\n".join(out)
    text = re.sub(r":[\w:.-]+:`~?!?([^`<]*?)\s*(?:<[^`>]*>)?`", r"\1", text)  # :func:`x` -> x
    text = re.sub(r"`([^`<]+?)\s*<[^`>]+>`__?", r"\1", text)  # `words <url>`_ -> words
    text = re.sub(r"`([^`]+)`_+", r"\1", text)
    text = text.replace("``", "")
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip()


def headings(lines: list[str]) -> list[tuple[int, str, str]]:
    """(line index of the title, title, adornment style) for every section title."""
    found = []
    i = 0
    while i < len(lines) - 1:
        title, under = lines[i].rstrip(), lines[i + 1].rstrip()
        over = ADORNMENT.match(lines[i - 1]) if i > 0 else None
        m = ADORNMENT.match(under)
        if title.strip() and not ADORNMENT.match(title) and m and len(under) >= len(title.strip()):
            style = ("over" if over and over.group(1) == m.group(1) else "") + m.group(1)
            found.append((i, title.strip(), style))
            i += 2
            continue
        i += 1
    return found


def parse_page(name: str, text: str) -> list[Entry]:
    lines = text.splitlines()
    found = headings(lines)
    if not found:
        return []
    styles: list[str] = []  # reST levels: in the order styles first appear
    for _, _, style in found:
        if style not in styles:
            styles.append(style)
    page_title = found[0][1]
    entries = []
    section = ""
    for n, (line, title, style) in enumerate(found):
        level = styles.index(style)
        if level == 0:
            continue
        if level == 1 and len(styles) > 2:
            section = title
            continue
        # the entry runs to the next title at its own level or above (sub-titles stay inside)
        end = len(lines)
        for line2, _, style2 in found[n + 1 :]:
            if styles.index(style2) <= level:
                end = line2 - (1 if style2.startswith("over") else 0)
                break
        if level > 2:
            continue  # a sub-title: already part of its entry's body
        body_lines = []
        for j in range(line + 2, end):
            if j + 1 < end and ADORNMENT.match(lines[j + 1]) and lines[j].strip():
                body_lines.append(lines[j])  # keep sub-titles as a line of text
            elif not ADORNMENT.match(lines[j]):
                body_lines.append(lines[j])
        body = clean_rst("\n".join(body_lines))
        if body:
            entries.append(Entry(page_title, section, title, body))
    return entries


def find_sources(deb: Path | None, work: Path) -> tuple[Path, str]:
    """The FAQ sources and where they came from (a .deb file name, or the installed package)."""
    installed = Path("/") / SOURCES
    if deb is None and installed.exists():
        return installed, f"{PACKAGE} (installed)"
    if deb is None:
        subprocess.run(["apt-get", "download", PACKAGE], cwd=work, check=True, capture_output=True)
        deb = next(work.glob(f"{PACKAGE}_*.deb"))
    subprocess.run(["dpkg-deb", "-x", str(deb), str(work / "x")], check=True)
    return work / "x" / SOURCES, deb.name


def build_pyfaq(out: Path, deb: Path | None = None) -> dict[str, int]:
    with tempfile.TemporaryDirectory(prefix="ragtune-pyfaq-") as tmp:
        src, origin = find_sources(deb, Path(tmp))
        entries = [e for page in PAGES for e in parse_page(page, (src / f"{page}.rst.txt").read_text())]
    out.mkdir(parents=True, exist_ok=True)
    (out / "qrels").mkdir(exist_ok=True)
    n_queries = 0
    with (
        (out / "corpus.jsonl").open("w") as corpus,
        (out / "queries.jsonl").open("w") as queries,
        (out / "qrels" / "test.tsv").open("w") as qrels,
    ):
        qrels.write("query-id\tcorpus-id\tscore\n")
        for i, e in enumerate(entries):
            doc_id = f"d{i}"
            title = f"{e.page}: {e.section}" if e.section else e.page
            corpus.write(json.dumps({"_id": doc_id, "title": title, "text": e.body}) + "\n")
            if e.heading.endswith("?"):
                queries.write(json.dumps({"_id": f"q{i}", "text": e.heading}) + "\n")
                qrels.write(f"q{i}\t{doc_id}\t1\n")
                n_queries += 1
    (out / "README.md").write_text(
        "# Python FAQ (pyfaq)\n"
        f"Built by `python -m bench.datasets pyfaq` from the Debian package {PACKAGE} "
        f"({origin}): the reStructuredText sources of the Python FAQ "
        f"(pages: {', '.join(PAGES)}), PSF licence.\n"
        f"{len(entries)} documents (one per FAQ entry: the answer, titled 'page: section'), "
        f"{n_queries} queries (the entries whose heading is a question), one relevant document "
        "each (grade 1). The question is not part of its document.\n"
    )
    return {"documents": len(entries), "queries": n_queries}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name", choices=["pyfaq"])
    parser.add_argument("out", type=Path, help="folder to write the BEIR files into")
    parser.add_argument("--deb", type=Path, help=f"a downloaded {PACKAGE} .deb (else apt-get download)")
    args = parser.parse_args()
    counts = build_pyfaq(args.out, args.deb)
    print(f"{args.out}: {counts['documents']} documents, {counts['queries']} queries")


if __name__ == "__main__":
    main()
