"""Split a document into overlapping windows of embedder tokens, keeping character offsets.

Windows start on a word boundary (never inside a word piece), so a chunk's text is
`document.text[start:end]` and cites cleanly. The title is kept with every chunk: it is put in
front of the text that gets embedded unless the chunk already starts with it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from ragtune.retrieval.embedder import Embedder


@dataclass(frozen=True)
class Chunk:
    seq: int
    text: str
    start: int
    end: int
    embed_text: str  # what the embedder sees (title + text)
    hash: str  # of embed_text and the embedder id: equal hash, equal vector
    tokens: int


def chunk_hash(embedder_id: str, embed_text: str) -> str:
    return hashlib.sha256(f"{embedder_id}\0{embed_text}".encode()).hexdigest()


def split_document(
    text: str,
    title: str | None,
    embedder: Embedder,
    *,
    chunk_tokens: int,
    overlap: int,
) -> list[Chunk]:
    offsets, word_starts = embedder.token_offsets(text)
    n = len(offsets)
    title_tokens = len(embedder.token_offsets(title)[0]) + 1 if title else 0
    windows: list[tuple[int, int]] = []
    lo = 0
    while lo < n:
        hi = min(lo + chunk_tokens, n)
        if hi < n:  # end on a word boundary as well, unless a single word fills the window
            cut = hi
            while cut > lo + 1 and not word_starts[cut]:
                cut -= 1
            hi = cut if cut > lo + 1 else hi
        windows.append((lo, hi))
        if hi >= n:
            break
        nxt = max(hi - overlap, lo + 1)
        while nxt > lo + 1 and not word_starts[nxt]:
            nxt -= 1
        lo = nxt
    chunks = []
    for seq, (lo, hi) in enumerate(windows):
        start, end = offsets[lo][0], offsets[hi - 1][1]
        body = text[start:end]
        prefix = bool(title) and not body.lower().startswith((title or "").strip().lower())
        embed_text = f"{title}\n{body}" if prefix else body
        tokens = hi - lo + (title_tokens if prefix else 0)
        chunks.append(Chunk(seq, body, start, end, embed_text, chunk_hash(embedder.id, embed_text), tokens))
    return chunks
