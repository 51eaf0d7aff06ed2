"""BM25 over the chunks in memory: the store's FTS5 postings, scored with numpy.

SQLite's FTS5 table is the durable full-text index (updated in the chunk's own transaction);
scoring a query there walks every matching row through an auxiliary function, which took
~100 ms a query at 100k chunks. This index holds the same postings - (term, chunk, term
frequency) and each chunk's token count - as numpy arrays and scores a query term by term with
vector arithmetic, with FTS5's bm25() formula (k1 = 1.2, b = 0.75, idf = ln((N - n + 0.5) /
(n + 0.5)), at least 1e-6), so it ranks exactly as FTS5 would.

Terms come from FTS5 itself: an in-memory FTS5 table with the store's tokenizer turns new
chunks and queries into terms, and a cold rebuild reads the postings out of the store's FTS5
table through fts5vocab. Like the FAISS index it is a derived snapshot, kept in step with the
store by chunk id.

Layout: postings live in immutable segments (term ids sorted, an offsets array, chunk slots,
frequencies); a write appends a small segment and marks removed chunks dead. Segments of
similar size are merged (dead postings dropped) outside the readers' lock, so a collection
holds O(log n) segments and a chunk's postings are copied O(log n) times over its life.
"""

from __future__ import annotations

import json
import math
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Must equal the tokenize= option of the store's chunks_fts table.
FTS_TOKENIZE = "porter unicode61"
K1 = 1.2
B = 0.75
FORMAT = 1

# Words that match most chunks: scoring them costs time and adds nothing to BM25's ranking, so
# queries drop them (unless nothing else is left). Chunks keep them: counts stay FTS5's.
STOPWORDS = frozenset(
    "a an and are as at be but by for from has have how i if in into is it its of on or such that the "  # noqa: SIM905
    "their then there these they this to was were what when where which who why will with".split()
)


class Tokenizer:
    """Text -> FTS5 terms with the store's tokenizer, through one in-memory FTS5 table per thread."""

    def __init__(self) -> None:
        self._local = threading.local()
        self.stopwords = frozenset(self.terms(" ".join(STOPWORDS)))

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(":memory:", isolation_level=None)
            conn.execute(f"CREATE VIRTUAL TABLE tok USING fts5(t, tokenize='{FTS_TOKENIZE}')")
            conn.execute("CREATE VIRTUAL TABLE tokv USING fts5vocab(tok, instance)")
            self._local.conn = conn
        return conn

    def counts(self, texts: Sequence[str]) -> list[tuple[str, int, int]]:
        """(term, index of the text, frequency) for every term of every text, sorted by term."""
        conn = self._conn()
        conn.execute("BEGIN")
        try:
            conn.executemany("INSERT INTO tok(rowid, t) VALUES (?, ?)", enumerate(texts))
            rows = conn.execute("SELECT term, doc, count(*) FROM tokv GROUP BY term, doc").fetchall()
        finally:
            conn.execute("ROLLBACK")  # leaves the table empty for the next call
        return rows

    def terms(self, text: str) -> list[str]:
        """The distinct terms of `text`, sorted."""
        return list(dict.fromkeys(term for term, _, _ in self.counts([text])))

    def query_terms(self, text: str) -> list[str]:
        terms = self.terms(text)
        return [t for t in terms if t not in self.stopwords] or terms


@dataclass(frozen=True)
class Counted:
    """New chunks' postings, counted before any lock is taken (see `count`)."""

    ids: np.ndarray  # ascending chunk ids
    terms: list[str]  # posting i: term i occurs freqs[i] times in chunk ids[docs[i]]
    docs: np.ndarray
    freqs: np.ndarray


def count(tokenizer: Tokenizer, ids: Sequence[int] | np.ndarray, texts: Sequence[str]) -> Counted:
    """Terms of chunks `ids`; `texts[i]` is chunk ids[i]'s text as FTS5 holds it (`fts_text`)."""
    ids = np.asarray(ids, dtype=np.int64)
    order = np.argsort(ids, kind="stable")
    rows = tokenizer.counts([texts[i] for i in order]) if len(ids) else []
    docs = np.fromiter((r[1] for r in rows), dtype=np.int64, count=len(rows))
    freqs = np.fromiter((r[2] for r in rows), dtype=np.float32, count=len(rows))
    return Counted(ids[order], [r[0] for r in rows], docs, freqs)


def _parse_ints(parts: Iterable[str]) -> np.ndarray:
    """Comma-separated integers (SQLite group_concat output) -> one int64 array."""
    text = ",".join(parts)
    return np.fromstring(text, dtype=np.int64, sep=",") if text else np.empty(0, np.int64)


def fts_text(title: str | None, text: str) -> str:
    """One string with a chunk's FTS5 columns (title, text): the same terms and counts."""
    return f"{title}\n{text}" if title else text


@dataclass(frozen=True)
class Segment:
    terms: np.ndarray  # int32, sorted term ids present in the segment
    offsets: np.ndarray  # int64, len(terms) + 1: postings of terms[i] are [offsets[i], offsets[i+1])
    slots: np.ndarray  # int32, the chunk slot of each posting
    freqs: np.ndarray  # uint16, the term's frequency in that chunk (chunks are a few hundred tokens)

    @property
    def size(self) -> int:
        return len(self.slots)

    @classmethod
    def from_postings(cls, term_ids: np.ndarray, slots: np.ndarray, freqs: np.ndarray) -> Segment:
        order = np.lexsort((slots, term_ids))
        term_ids, slots, freqs = term_ids[order], slots[order], freqs[order]
        terms, starts = np.unique(term_ids, return_index=True)
        offsets = np.append(starts, len(term_ids)).astype(np.int64)
        return cls(terms.astype(np.int32), offsets, slots.astype(np.int32), freqs.astype(np.uint16))

    def postings(self, term: int) -> tuple[np.ndarray, np.ndarray] | None:
        i = int(np.searchsorted(self.terms, term))
        if i == len(self.terms) or self.terms[i] != term:
            return None
        lo, hi = self.offsets[i], self.offsets[i + 1]
        return self.slots[lo:hi], self.freqs[lo:hi]

    def expand(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(term id, slot, frequency) per posting."""
        return np.repeat(self.terms, np.diff(self.offsets)), self.slots, self.freqs


def merge(segments: Sequence[Segment], alive: np.ndarray, renumber: np.ndarray | None = None) -> Segment:
    """One segment with the live postings of `segments` (slots mapped through `renumber`)."""
    parts = [s.expand() for s in segments]
    terms = np.concatenate([p[0] for p in parts])
    slots = np.concatenate([p[1] for p in parts])
    freqs = np.concatenate([p[2] for p in parts])
    keep = alive[slots]
    terms, slots, freqs = terms[keep], slots[keep], freqs[keep]
    if renumber is not None:
        slots = renumber[slots]
    return Segment.from_postings(terms, slots, freqs)


class SparseIndex:
    """BM25 postings of a set of chunks; ids are the store's chunk ids, which only grow."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self.vocab: dict[str, int] = {}
        self.segments: list[Segment] = []
        self.chunk_ids = np.empty(0, np.int64)  # slot -> chunk id, ascending
        self.lengths = np.empty(0, np.float32)  # slot -> tokens in the chunk
        self.alive = np.empty(0, bool)
        self.live = 0
        self.live_tokens = 0.0
        self._norm: np.ndarray | None = None  # K1 * (1 - B + B * length / avgdl), per slot

    # -- building ------------------------------------------------------------------------
    def _term_ids(self, terms: Sequence[str]) -> np.ndarray:
        vocab = self.vocab
        return np.fromiter((vocab.setdefault(t, len(vocab)) for t in terms), np.int32, len(terms))

    def _append(self, ids: np.ndarray, term_ids: np.ndarray, docs: np.ndarray, freqs: np.ndarray) -> None:
        """Add chunks `ids` (ascending, all above the current ones) from postings: term
        term_ids[i] occurs freqs[i] times in chunk ids[docs[i]]."""
        if not len(ids):
            return
        if len(self.chunk_ids) and ids[0] <= self.chunk_ids[-1]:
            raise ValueError("chunk ids must grow")
        first = len(self.chunk_ids)
        lengths = np.bincount(docs, weights=freqs, minlength=len(ids)).astype(np.float32)
        self.chunk_ids = np.concatenate([self.chunk_ids, ids])
        self.lengths = np.concatenate([self.lengths, lengths])
        self.alive = np.concatenate([self.alive, np.ones(len(ids), bool)])
        self.live += len(ids)
        self.live_tokens += float(lengths.sum())
        self._norm = None
        freqs = np.minimum(freqs, np.iinfo(np.uint16).max)
        self.segments.append(Segment.from_postings(term_ids, (docs + first).astype(np.int32), freqs))

    def add(self, counted: Counted) -> None:
        self._append(counted.ids, self._term_ids(counted.terms), counted.docs, counted.freqs)

    @classmethod
    def from_store(
        cls, conn: sqlite3.Connection, tokenizer: Tokenizer, ids: np.ndarray | None = None
    ) -> SparseIndex:
        """Every chunk's postings, read out of the store's FTS5 index (inside the caller's read
        transaction): ~10 s for 100k chunks (7M postings) here, mostly FTS5 walking its index."""
        self = cls(tokenizer)
        if ids is None:  # the store's chunk ids, ascending
            ids = np.fromiter(
                (r[0] for r in conn.execute("SELECT id FROM chunks ORDER BY id")), dtype=np.int64
            )
        # One row per term with its postings as text: 100x fewer Python objects than a row each.
        rows = conn.execute(
            "SELECT term, count(*), group_concat(doc), group_concat(cnt) FROM "
            "(SELECT term, doc, count(*) AS cnt FROM chunks_fts_instance GROUP BY term, doc) GROUP BY term"
        ).fetchall()
        term_ids = np.repeat(self._term_ids([r[0] for r in rows]), [r[1] for r in rows])
        docs = _parse_ints(r[2] for r in rows)
        positions = np.searchsorted(ids, docs)
        if len(docs) and (positions.max() >= len(ids) or not np.array_equal(ids[positions], docs)):
            raise ValueError("the FTS5 index holds chunks the store does not")
        self._append(ids, term_ids, positions, _parse_ints(r[3] for r in rows).astype(np.float32))
        return self

    def remove(self, ids: np.ndarray) -> None:
        """Mark chunks dead; ids not in the index (or dead already) are ignored."""
        slots = self._slots_of(ids)
        slots = slots[self.alive[slots]]
        if not len(slots):
            return
        self.alive[slots] = False
        self.live -= len(slots)
        self.live_tokens -= float(self.lengths[slots].sum())
        self._norm = None

    def _slots_of(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        if not len(ids) or not len(self.chunk_ids):
            return np.empty(0, np.int64)
        slots = np.searchsorted(self.chunk_ids, ids)
        slots = slots[slots < len(self.chunk_ids)]
        return np.unique(slots[np.isin(self.chunk_ids[slots], ids)])

    # -- upkeep --------------------------------------------------------------------------
    @property
    def _needs_compaction(self) -> bool:
        """More than a quarter of the slots dead."""
        return len(self.chunk_ids) - self.live > len(self.chunk_ids) // 4

    @property
    def needs_merge(self) -> bool:
        """Two newest segments of similar size, or a compaction due."""
        segs = self.segments
        return (len(segs) >= 2 and 2 * segs[-1].size >= segs[-2].size) or self._needs_compaction

    def merged(self) -> SparseIndex:
        """A new index with the same contents and fewer segments (built without touching this one,
        so searches go on meanwhile; the caller swaps it in). Heavy in dead slots: one segment,
        slots renumbered and unused terms dropped; otherwise the newest similar-sized ones."""
        fresh = SparseIndex(self.tokenizer)
        fresh.live, fresh.live_tokens = self.live, self.live_tokens
        if self._needs_compaction:
            keep = self.alive
            renumber = np.cumsum(keep, dtype=np.int64) - 1
            seg = merge(self.segments, keep, renumber)
            used, seg_terms = np.unique(seg.terms, return_inverse=True)
            words = list(self.vocab)
            fresh.vocab = {words[t]: n for n, t in enumerate(used.tolist())}
            seg = Segment(seg_terms.astype(np.int32), seg.offsets, seg.slots, seg.freqs)
            fresh.segments = [seg] if seg.size else []
            fresh.chunk_ids, fresh.lengths = self.chunk_ids[keep], self.lengths[keep]
            fresh.alive = np.ones(int(keep.sum()), bool)
            return fresh
        segs = list(self.segments)
        tail = [segs.pop()]
        while segs and 2 * sum(s.size for s in tail) >= segs[-1].size:
            tail.insert(0, segs.pop())
        fresh.vocab = self.vocab  # only ever grows; shared until a compaction copies it
        fresh.segments = [*segs, merge(tail, self.alive)]
        fresh.chunk_ids, fresh.lengths, fresh.alive = self.chunk_ids, self.lengths, self.alive.copy()
        return fresh

    # -- search --------------------------------------------------------------------------
    def search(
        self, terms: Sequence[str], k: int, allowed: np.ndarray | None = None
    ) -> list[tuple[int, float]]:
        """Top-k (chunk id, bm25) for a query's terms, best first; `allowed` limits the chunk ids."""
        if self.live == 0 or k <= 0:
            return []
        n_slots = len(self.chunk_ids)
        if self._norm is None:
            avgdl = self.live_tokens / self.live
            self._norm = (K1 * (1 - B + B * self.lengths / avgdl)).astype(np.float32)
        norm = self._norm
        some_dead = self.live < n_slots
        scores = np.zeros(n_slots, np.float64)
        for term in terms:
            tid = self.vocab.get(term)
            if tid is None:
                continue
            found = [p for seg in self.segments if (p := seg.postings(tid)) is not None]
            if not found:
                continue
            slots = np.concatenate([p[0] for p in found]) if len(found) > 1 else found[0][0]
            freqs = np.concatenate([p[1] for p in found]) if len(found) > 1 else found[0][1]
            if some_dead:
                keep = self.alive[slots]
                slots, freqs = slots[keep], freqs[keep]
            n = len(slots)
            if not n:
                continue
            idf = max(math.log((self.live - n + 0.5) / (n + 0.5)), 1e-6)
            scores[slots] += (idf * (K1 + 1)) * freqs / (freqs + norm[slots])
        if allowed is not None:
            mask = np.zeros(n_slots, bool)
            mask[self._slots_of(allowed)] = True
            scores[~mask] = 0.0
        hits = np.flatnonzero(scores)
        if len(hits) > k:
            hits = hits[np.argpartition(-scores[hits], k - 1)[:k]]
        hits = hits[np.lexsort((self.chunk_ids[hits], -scores[hits]))]
        return list(zip(self.chunk_ids[hits].tolist(), scores[hits].tolist(), strict=True))

    # -- contents and persistence ---------------------------------------------------------
    def ids(self) -> np.ndarray:
        """Every chunk id the index has seen, dead ones included (ids are never reused)."""
        return self.chunk_ids

    def live_ids(self) -> np.ndarray:
        return self.chunk_ids[self.alive]

    @property
    def postings(self) -> int:
        return sum(s.size for s in self.segments)

    def memory_bytes(self) -> int:
        arrays = sum(
            s.terms.nbytes + s.offsets.nbytes + s.slots.nbytes + s.freqs.nbytes for s in self.segments
        )
        per_slot = self.chunk_ids.nbytes + self.lengths.nbytes + self.alive.nbytes
        return arrays + per_slot + sum(len(t) + 90 for t in self.vocab)  # ~90 bytes a dict entry + str

    def save(self, path: Path) -> None:
        segs = self.segments
        arrays = {
            "format": np.array([FORMAT]),
            "vocab": np.frombuffer(json.dumps(list(self.vocab)).encode(), dtype=np.uint8),
            "chunk_ids": self.chunk_ids,
            "lengths": self.lengths,
            "alive": self.alive,
            "segment_terms": np.array([len(s.terms) for s in segs], np.int64),
            "segment_postings": np.array([s.size for s in segs], np.int64),
            "terms": _cat([s.terms for s in segs], np.int32),
            "offsets": _cat([s.offsets for s in segs], np.int64),
            "slots": _cat([s.slots for s in segs], np.int32),
            "freqs": _cat([s.freqs for s in segs], np.uint16),
        }
        with open(path, "wb") as fh:
            np.savez(fh, allow_pickle=False, **arrays)

    @classmethod
    def load(cls, path: Path, tokenizer: Tokenizer) -> SparseIndex:
        self = cls(tokenizer)
        with np.load(path) as data:
            if int(data["format"][0]) != FORMAT:
                raise ValueError(f"sparse snapshot format {int(data['format'][0])}, expected {FORMAT}")
            words = json.loads(data["vocab"].tobytes())
            self.vocab = {w: i for i, w in enumerate(words)}
            self.chunk_ids, self.lengths, self.alive = data["chunk_ids"], data["lengths"], data["alive"]
            n_terms, n_post = data["segment_terms"], data["segment_postings"]
            terms, offsets, slots, freqs = data["terms"], data["offsets"], data["slots"], data["freqs"]
        t = o = p = 0
        for nt, npost in zip(n_terms.tolist(), n_post.tolist(), strict=True):
            self.segments.append(
                Segment(
                    terms[t : t + nt], offsets[o : o + nt + 1], slots[p : p + npost], freqs[p : p + npost]
                )
            )
            t, o, p = t + nt, o + nt + 1, p + npost
        if not (len(self.chunk_ids) == len(self.lengths) == len(self.alive)) or p != len(slots):
            raise ValueError("sparse snapshot arrays disagree")
        self.live = int(self.alive.sum())
        self.live_tokens = float(self.lengths[self.alive].sum())
        return self


def _cat(arrays: list[np.ndarray], dtype: type) -> np.ndarray:
    return np.concatenate(arrays).astype(dtype, copy=False) if arrays else np.empty(0, dtype)
