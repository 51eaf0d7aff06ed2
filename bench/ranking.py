"""Ranking experiment: fusion, BM25 settings, pseudo-relevance feedback and LLM reranking,
every method on every data set, with one set of defaults (nothing tuned to one set).

    nice -n 10 .venv/bin/python -m bench.ranking [--dataset DIR[:MAX_QUERIES]]... [--rerank-queries 50]

Each data set is ingested once into a real collection under --cache (default
/tmp/ragtune-ranking; re-runs reuse it: nothing is re-embedded) with the default retrieval
settings. The experiment then reads the collection's chunks, stored embeddings and FTS5 terms
and scores every method from them in numpy (dense = exact inner product, the flat index's
result; BM25 = FTS5's formula, checked against the collection's own sparse search). Rankings are
over chunks, folded into documents (a document ranks where its best chunk does) and scored
with the project's nDCG@10 / R@10 / R@100, exactly as `ragtune eval retrieval` does; hybrid
methods take `depth` candidates from each side as the collection does for k=200.

Writes bench/results/ranking.json and bench/results/ranking.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from bench.machine import cpu_model  # noqa: E402
from ragtune.evaluation.retrieval import Dataset, load_dataset, ndcg_at, recall_at  # noqa: E402
from ragtune.retrieval import Library  # noqa: E402
from ragtune.retrieval.ingest import load_beir, upsert_batches  # noqa: E402
from ragtune.retrieval.settings import RetrievalSettings  # noqa: E402
from ragtune.retrieval.sparse import Tokenizer  # noqa: E402

RESULTS = Path(__file__).parent / "results"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
DISFLQA = Path(__file__).resolve().parents[1] / "examples" / "disflqa"
DEFAULT_SETS = [f"{SHARED / 'cranfield'}", f"{DISFLQA}:1000", "/tmp/pyfaq"]
DEPTH = 200  # chunks asked for per query (ragtune eval retrieval asks k=200)
Ranking = list[tuple[int, float]]  # (chunk row, score), best first


# -- the data ------------------------------------------------------------------------------
@dataclass
class Corpus:
    """A collection's chunks as arrays: row i is chunk ids[i] of document doc_of[i]."""

    name: str
    data: Dataset
    ids: np.ndarray
    doc_of: list[str]
    vectors: np.ndarray  # (chunks, dim), unit rows
    texts: list[str]  # title + text, as the reranker reads them
    tf_title: sp.csc_matrix  # chunk x term counts of the title
    tf_text: sp.csc_matrix
    vocab: dict[str, int]
    words: list[str]
    qids: list[str] = field(default_factory=list)
    qvecs: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    qterms: list[list[str]] = field(default_factory=list)


def load_corpus(root: Path, max_queries: int | None, cache: Path) -> Corpus:
    data = load_dataset(root, max_queries=max_queries)
    settings = RetrievalSettings.model_validate({"snapshot_interval": 3600.0})
    lib = Library(cache, settings)
    name = f"rank-{data.name}"
    try:
        c = lib.open(name)
    except Exception:  # noqa: BLE001 - not built yet
        c = lib.create(name)
    docs = [d for d in load_beir(data.corpus) if d.text.strip()]
    t0 = time.perf_counter()
    totals = upsert_batches(c, docs, batch_size=256)
    print(f"{data.name}: {totals} in {time.perf_counter() - t0:.1f} s", flush=True)
    conn = c.store.reader()
    rows = conn.execute("SELECT id, doc_id, title, text, embedding, seq FROM chunks ORDER BY id").fetchall()
    ids = np.array([r[0] for r in rows], np.int64)
    vectors = np.frombuffer(b"".join(r[4] for r in rows), np.float32).reshape(len(rows), -1)
    tok = Tokenizer()
    vocab: dict[str, int] = {}

    def matrix(texts: list[str]) -> sp.csc_matrix:
        counted = tok.counts(texts)
        cols = [vocab.setdefault(t, len(vocab)) for t, _, _ in counted]
        m = sp.coo_matrix(
            ([f for _, _, f in counted], ([d for _, d, _ in counted], cols)),
            shape=(len(texts), 1 << 20),
            dtype=np.float32,
        )
        return m.tocsc()

    tf_text = matrix([r[3] for r in rows])
    tf_title = matrix([r[2] or "" for r in rows])
    n = len(vocab)
    corpus = Corpus(
        data.name,
        data,
        ids,
        [r[1] for r in rows],
        vectors,
        [f"{r[2]}\n{r[3]}" if r[2] else r[3] for r in rows],
        tf_title[:, :n].tocsc(),
        tf_text[:, :n].tocsc(),
        vocab,
        list(vocab),
    )
    # Query vectors through the collection's own query path (cached beside the collection).
    corpus.qids = list(data.queries)
    qfile = cache / name / "queries.npz"
    cached = np.load(qfile) if qfile.exists() else None
    if cached is not None and list(cached["qids"]) == corpus.qids:
        corpus.qvecs = cached["vecs"]
    else:
        t0 = time.perf_counter()
        corpus.qvecs = np.vstack([c.embedder.embed_query(data.queries[q]) for q in corpus.qids])
        print(f"{data.name}: {len(corpus.qids)} queries embedded in {time.perf_counter() - t0:.1f} s")
        np.savez(qfile, qids=np.array(corpus.qids), vecs=corpus.qvecs)
    corpus.qterms = [tok.query_terms(data.queries[q]) for q in corpus.qids]
    # The experiment's BM25 must be the collection's: compare the top 10 for some queries.
    keys = [f"{r[1]}#{r[5]}" for r in rows]
    checked = corpus.qids[:50]
    agree = 0
    for i, q in enumerate(checked):
        ours = [keys[r] for r, _ in Bm25(corpus).search(weights(corpus.qterms[i]), 10)]
        theirs = [h.chunk_id for h in c.search(data.queries[q], k=10, mode="sparse")]
        agree += ours == theirs
    print(f"{data.name}: experiment BM25 top-10 equals the collection's for {agree}/{len(checked)} queries")
    lib.close()
    return corpus


def weights(terms: Sequence[str]) -> dict[str, float]:
    return dict.fromkeys(terms, 1.0)


# -- BM25 ------------------------------------------------------------------------------------
class Bm25:
    """FTS5's BM25 (idf floored at 1e-6) with k1, b and a title weight (the title's counts are
    multiplied by it: 1 = today's single FTS5 column over 'title\\ntext', 0 = no title)."""

    def __init__(self, corpus: Corpus, *, k1: float = 1.2, b: float = 0.75, title: float = 1.0):
        self.corpus, self.k1, self.b = corpus, k1, b
        tf = (corpus.tf_text + title * corpus.tf_title).tocsc() if title else corpus.tf_text
        self.tf = tf
        lengths = np.asarray(tf.sum(axis=1)).ravel()
        self.norm = k1 * (1 - b + b * lengths / lengths.mean())
        n = tf.shape[0]
        df = np.diff(tf.indptr)
        self.idf = np.maximum(np.log((n - df + 0.5) / (df + 0.5)), 1e-6)

    def scores(self, query: dict[str, float]) -> np.ndarray:
        out = np.zeros(self.tf.shape[0])
        for term, w in query.items():
            col = self.corpus.vocab.get(term)
            if col is None:
                continue
            lo, hi = self.tf.indptr[col], self.tf.indptr[col + 1]
            rows, f = self.tf.indices[lo:hi], self.tf.data[lo:hi]
            if not len(rows):
                continue
            out[rows] += w * self.idf[col] * (self.k1 + 1) * f / (f + self.norm[rows])
        return out

    def search(self, query: dict[str, float], k: int) -> Ranking:
        return top(self.scores(query), k)


def top(scores: np.ndarray, k: int, *, positive: bool = True) -> Ranking:
    hits = np.flatnonzero(scores > 0) if positive else np.arange(len(scores))
    if len(hits) > k:
        hits = hits[np.argpartition(-scores[hits], k - 1)[:k]]
    hits = hits[np.argsort(-scores[hits], kind="stable")]
    return [(int(i), float(scores[i])) for i in hits]


def rm3(
    bm25: Bm25,
    query: dict[str, float],
    first: Ranking,
    *,
    docs: int = 10,
    terms: int = 10,
    original: float = 0.5,
) -> dict[str, float]:
    """RM3 (Abdul-Jaleel et al. 2004; Anserini's defaults fbDocs=10, fbTerms=10, weight 0.5):
    relevance model from the top `docs` chunks, top `terms` terms, mixed with the query."""
    fb = first[:docs]
    if not fb:
        return query
    c = bm25.corpus
    scores = np.array([s for _, s in fb])
    scores = scores / scores.sum() if scores.sum() > 0 else np.full(len(fb), 1 / len(fb))
    rows = bm25.tf.tocsr()[[r for r, _ in fb]]
    lengths = np.asarray(rows.sum(axis=1)).ravel()
    p = sp.diags(scores / np.maximum(lengths, 1)) @ rows
    rel = np.asarray(p.sum(axis=0)).ravel()
    tok_stop = STOP
    candidates = np.argsort(-rel)
    picked: dict[str, float] = {}
    for t in candidates:
        if rel[t] <= 0 or len(picked) == terms:
            break
        word = c.words[t]
        if word in tok_stop or bm25.idf[t] <= 1e-6 or word.isdigit():
            continue
        picked[word] = float(rel[t])
    total = sum(picked.values()) or 1.0
    qn = sum(query.values())
    mixed = {t: original * w / qn for t, w in query.items()}
    for t, w in picked.items():
        mixed[t] = mixed.get(t, 0.0) + (1 - original) * w / total
    return mixed


STOP = Tokenizer().stopwords


# -- dense -----------------------------------------------------------------------------------
def rocchio(
    corpus: Corpus, q: np.ndarray, first: Ranking, *, docs: int = 5, alpha: float = 1.0, beta: float = 0.5
) -> np.ndarray:
    """Rocchio on the query vector: alpha * q + beta * mean of the top `docs` chunk vectors."""
    fb = [r for r, _ in first[:docs]]
    if not fb:
        return q
    v = alpha * q + beta * corpus.vectors[fb].mean(axis=0)
    return (v / np.linalg.norm(v)).astype(np.float32)


# -- fusion ----------------------------------------------------------------------------------
def rrf(lists: Sequence[Ranking], k: int = 60) -> Ranking:
    scores: dict[int, float] = {}
    for ranking in lists:
        for rank, (item, _) in enumerate(ranking, start=1):
            scores[item] = scores.get(item, 0.0) + 1.0 / (k + rank)
    return sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))


def normalise(ranking: Ranking, how: str) -> dict[int, float]:
    if not ranking:
        return {}
    s = np.array([x for _, x in ranking])
    if how == "minmax":
        lo, hi = s.min(), s.max()
        n = (s - lo) / (hi - lo) if hi > lo else np.ones_like(s)
    elif how == "zscore":
        sd = s.std()
        n = (s - s.mean()) / sd if sd > 0 else np.zeros_like(s)
    elif how == "max":  # divide by the best score (theoretical minimum 0 for BM25 and cosine>0)
        n = s / s.max() if s.max() > 0 else s
    else:
        raise ValueError(how)
    return {r: float(v) for (r, _), v in zip(ranking, n, strict=True)}


def convex(
    dense: Ranking,
    sparse: Ranking,
    *,
    alpha: float = 0.5,
    how: str = "minmax",
    fill: tuple[np.ndarray, np.ndarray] | None = None,
) -> Ranking:
    """alpha * norm(dense) + (1 - alpha) * norm(sparse) over the union of candidates
    (Bruch et al. 2022). A candidate missing from one list scores that list's minimum after
    normalisation, or, with `fill`, its exact score there is looked up first."""
    if fill is not None:
        dfull, sfull = fill
        union = sorted({r for r, _ in dense} | {r for r, _ in sparse})
        dense = [(r, float(dfull[r])) for r in union]
        sparse = [(r, float(sfull[r])) for r in union]
    nd, ns = normalise(dense, how), normalise(sparse, how)
    dmin = min(nd.values(), default=0.0)
    smin = min(ns.values(), default=0.0)
    out = {r: alpha * nd.get(r, dmin) + (1 - alpha) * ns.get(r, smin) for r in set(nd) | set(ns)}
    return sorted(out.items(), key=lambda kv: (-kv[1], kv[0]))


# -- evaluation -------------------------------------------------------------------------------
def fold(corpus: Corpus, ranking: Ranking, depth: int = 100) -> list[str]:
    return list(dict.fromkeys(corpus.doc_of[r] for r, _ in ranking))[:depth]


def metrics(corpus: Corpus, rankings: dict[str, Ranking]) -> dict[str, float]:
    t = {"ndcg@10": 0.0, "recall@10": 0.0, "recall@100": 0.0}
    for qid, ranking in rankings.items():
        docs = fold(corpus, ranking)
        rels = corpus.data.qrels[qid]
        t["ndcg@10"] += ndcg_at(docs, rels, 10)
        t["recall@10"] += recall_at(docs, rels, 10)
        t["recall@100"] += recall_at(docs, rels, 100)
    n = max(len(rankings), 1)
    return {k: round(v / n, 4) for k, v in t.items()}


Method = Callable[[int], Ranking]  # query index -> chunk ranking


def methods(corpus: Corpus) -> dict[str, tuple[str, Method]]:
    """Every method: name -> (group, function of the query index)."""
    bm = {
        "k1=1.2 b=0.75 title=1 (today)": Bm25(corpus),
        "k1=0.9 b=0.4 title=1": Bm25(corpus, k1=0.9, b=0.4),
        "k1=1.5 b=0.75 title=1": Bm25(corpus, k1=1.5),
        "k1=2.0 b=0.75 title=1": Bm25(corpus, k1=2.0),
        "k1=1.2 b=0.5 title=1": Bm25(corpus, b=0.5),
        "k1=1.2 b=0.9 title=1": Bm25(corpus, b=0.9),
        "k1=1.2 b=0.75 title=0": Bm25(corpus, title=0.0),
        "k1=1.2 b=0.75 title=2": Bm25(corpus, title=2.0),
    }
    base = bm["k1=1.2 b=0.75 title=1 (today)"]
    memo: dict[tuple[str, int], Any] = {}

    def cached(key: str, i: int, fn: Callable[[], Any]) -> Any:
        if (key, i) not in memo:
            memo[(key, i)] = fn()
        return memo[(key, i)]

    def dense_scores(i: int) -> np.ndarray:
        return cached("dscores", i, lambda: corpus.vectors @ corpus.qvecs[i])

    def sparse_scores(i: int) -> np.ndarray:
        return cached("sscores", i, lambda: base.scores(weights(corpus.qterms[i])))

    def dense(i: int) -> Ranking:
        return cached("dense", i, lambda: top(dense_scores(i), DEPTH, positive=False))

    def sparse(i: int) -> Ranking:
        return cached("sparse", i, lambda: top(sparse_scores(i), DEPTH))

    def sparse_rm3(i: int, first: Callable[[int], Ranking] = sparse, key: str = "rm3") -> Ranking:
        return cached(key, i, lambda: base.search(rm3(base, weights(corpus.qterms[i]), first(i)), DEPTH))

    def dense_rocchio(i: int, first: Callable[[int], Ranking] = dense, key: str = "rocchio") -> Ranking:
        return cached(
            key,
            i,
            lambda: top(corpus.vectors @ rocchio(corpus, corpus.qvecs[i], first(i)), DEPTH, positive=False),
        )

    def cc(i: int, d: Ranking, s: Ranking, **kw: Any) -> Ranking:
        return convex(d, s, **kw)

    out: dict[str, tuple[str, Method]] = {
        "dense": ("single", dense),
        "sparse (BM25)": ("single", sparse),
        "RRF k=60 (today)": ("fusion", lambda i: rrf([dense(i), sparse(i)], 60)),
        "RRF k=10": ("fusion", lambda i: rrf([dense(i), sparse(i)], 10)),
        "convex min-max a=0.5": ("fusion", lambda i: convex(dense(i), sparse(i))),
        "convex min-max a=0.5, exact fill": (
            "fusion",
            lambda i: convex(dense(i), sparse(i), fill=(dense_scores(i), sparse_scores(i))),
        ),
        "convex z-score a=0.5": ("fusion", lambda i: convex(dense(i), sparse(i), how="zscore")),
        "convex max-norm a=0.5": ("fusion", lambda i: convex(dense(i), sparse(i), how="max")),
        # what a chat request (top_k=5) sees: 100 candidates a side instead of 200
        "RRF k=60, 100 candidates": ("fusion", lambda i: rrf([dense(i)[:100], sparse(i)[:100]], 60)),
        "convex min-max a=0.5, 100 candidates": (
            "fusion",
            lambda i: convex(dense(i)[:100], sparse(i)[:100]),
        ),
        "convex z-score a=0.5, 100 candidates": (
            "fusion",
            lambda i: convex(dense(i)[:100], sparse(i)[:100], how="zscore"),
        ),
    }
    for a in (0.3, 0.4, 0.6, 0.7):
        out[f"convex min-max a={a} (sensitivity)"] = (
            "alpha",
            lambda i, a=a: convex(dense(i), sparse(i), alpha=a),
        )
    for name, model in bm.items():

        def fn(i: int, model: Bm25 = model) -> Ranking:
            return model.search(weights(corpus.qterms[i]), DEPTH)

        out[f"BM25 {name}"] = ("bm25", fn)
        out[f"hybrid RRF, BM25 {name}"] = ("bm25", lambda i, fn=fn: rrf([dense(i), fn(i)], 60))
        out[f"hybrid convex, BM25 {name}"] = ("bm25", lambda i, fn=fn: convex(dense(i), fn(i)))

    def hybrid_first(i: int) -> Ranking:
        return cached("hyb", i, lambda: convex(dense(i), sparse(i), how="zscore"))

    out.update(
        {
            "BM25 + RM3": ("prf", sparse_rm3),
            "dense + Rocchio": ("prf", dense_rocchio),
            "RRF(dense+Rocchio, BM25+RM3)": ("prf", lambda i: rrf([dense_rocchio(i), sparse_rm3(i)], 60)),
            "convex(dense+Rocchio, BM25+RM3)": ("prf", lambda i: convex(dense_rocchio(i), sparse_rm3(i))),
            "convex(dense, BM25+RM3)": ("prf", lambda i: convex(dense(i), sparse_rm3(i))),
            "convex(dense+Rocchio, BM25)": ("prf", lambda i: convex(dense_rocchio(i), sparse(i))),
            # feedback taken from the fused first pass (more precise than either list alone)
            "convex(dense+Rocchio from the fused list, BM25)": (
                "prf",
                lambda i: convex(dense_rocchio(i, hybrid_first, "roc-h"), sparse(i), how="zscore"),
            ),
            "convex, PRF from the fused list": (
                "prf",
                lambda i: convex(
                    dense_rocchio(i, hybrid_first, "roc-h"),
                    sparse_rm3(i, hybrid_first, "rm3-h"),
                    how="zscore",
                ),
            ),
        }
    )
    return out


# -- reranking with the served model ----------------------------------------------------------
class Reranker:
    """Yes/no log-probabilities of SmolLM2-135M-Instruct (transformers, CPU) on a question and a
    passage; score = log P(yes) - log P(no) for the first answer token."""

    def __init__(self, path: Path, threads: int = 2):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.set_num_threads(threads)
        self.torch = torch
        self.tok = AutoTokenizer.from_pretrained(path)
        self.tok.padding_side = "left"
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        self.yes = [self.tok.encode(w, add_special_tokens=False)[0] for w in ("yes", "Yes")]
        self.no = [self.tok.encode(w, add_special_tokens=False)[0] for w in ("no", "No")]

    def prompt(self, question: str, passage: str) -> str:
        ids = self.tok.encode(passage, add_special_tokens=False)[:256]
        passage = self.tok.decode(ids)
        messages = [
            {"role": "system", "content": "You judge whether a passage answers a question. Reply yes or no."},
            {
                "role": "user",
                "content": f"Passage: {passage}\n\nQuestion: {question}\n\n"
                "Does the passage answer the question? Reply yes or no.",
            },
        ]
        return self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def scores(self, question: str, passages: Sequence[str], batch: int = 10) -> list[float]:
        out: list[float] = []
        for lo in range(0, len(passages), batch):
            texts = [self.prompt(question, p) for p in passages[lo : lo + batch]]
            enc = self.tok(texts, return_tensors="pt", padding=True)
            with self.torch.inference_mode():
                logits = self.model(**enc).logits[:, -1, :].float()
            logp = self.torch.log_softmax(logits, dim=-1)
            yes = self.torch.logsumexp(logp[:, self.yes], dim=-1)
            no = self.torch.logsumexp(logp[:, self.no], dim=-1)
            out += (yes - no).tolist()
        return out


def rerank_experiment(
    corpus: Corpus, first: Method, reranker: Reranker, n: int, top_n: int
) -> dict[str, Any]:
    qs = list(range(min(n, len(corpus.qids))))
    base, pure, mixed = {}, {}, {}
    t0 = time.perf_counter()
    tokens = 0
    for i in qs:
        ranking = first(i)
        head, tail = ranking[:top_n], ranking[top_n:]
        passages = [corpus.texts[r] for r, _ in head]
        tokens += sum(len(reranker.tok.encode(p)[:256]) for p in passages)
        s = reranker.scores(corpus.data.queries[corpus.qids[i]], passages)
        qid = corpus.qids[i]
        base[qid] = ranking
        pure[qid] = [h for _, h in sorted(zip(s, head, strict=True), key=lambda x: -x[0])] + tail
        # interpolation: min-max of the fused score and of the reranker score, half each
        f = normalise(head, "minmax")
        z = normalise([(r, v) for (r, _), v in zip(head, s, strict=True)], "minmax")
        mixed[qid] = sorted(head, key=lambda h: -(0.5 * f[h[0]] + 0.5 * z[h[0]])) + tail
    took = time.perf_counter() - t0
    return {
        "queries": len(qs),
        "top_n": top_n,
        "seconds_per_query": round(took / max(len(qs), 1), 2),
        "passage_tokens_per_query": round(tokens / max(len(qs), 1)),
        "first stage (same queries)": metrics(corpus, base),
        "reranked (LLM order of the top n)": metrics(corpus, pure),
        "reranked (0.5 fused + 0.5 LLM, min-max)": metrics(corpus, mixed),
    }


# -- report -------------------------------------------------------------------------------------
def write_markdown(report: dict[str, Any], path: Path) -> None:
    sets = list(report["sets"])
    lines = [
        "# Ranking experiment",
        "",
        f"Command: `{report['command']}`  ",
        f"Machine: {report['machine']['nproc']} CPUs ({report['machine']['cpu']}), Python "
        f"{report['machine']['python']}, load average {report['machine']['loadavg']} (shared machine)  ",
        f"Date: {report['date']}  ",
        "Data: "
        + "; ".join(
            f"{s} ({v['documents']} documents, {v['chunks']} chunks, {v['queries']} queries)"
            for s, v in report["sets"].items()
        ),
        "",
        "Every method on every set with the same settings; nothing is tuned to one set. Chunk rankings",
        f"({DEPTH} candidates a side, as `ragtune eval retrieval`) are folded into documents.",
        "Columns: nDCG@10 / R@10 / R@100.",
        "",
    ]
    groups = {
        "single": "Single retrievers",
        "fusion": "Fusion of dense and BM25 (a priori weights)",
        "alpha": "Sensitivity of the convex weight (reported, not used to choose)",
        "bm25": "BM25 settings (alone, and fused with dense by RRF and by convex min-max a=0.5)",
        "prf": "Pseudo-relevance feedback (RM3: 10 docs, 10 terms, weight 0.5; Rocchio: 5 docs, 1.0 / 0.5)",
    }
    names = list(dict.fromkeys(m for v in report["sets"].values() for m in v["methods"]))
    group_of = report["groups"]
    for g, title in groups.items():
        lines += [f"## {title}", "", "| method | " + " | ".join(sets) + " |", "|---|" + "---:|" * len(sets)]
        for m in names:
            if group_of[m] != g:
                continue
            cells = []
            for s in sets:
                r = report["sets"][s]["methods"].get(m)
                cells.append(
                    "not run"
                    if r is None
                    else f"{r['ndcg@10']:.4f} / {r['recall@10']:.4f} / {r['recall@100']:.4f}"
                )
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        lines.append("")
    if any("rerank" in v for v in report["sets"].values()):
        lines += [
            "## Reranking with the served model (SmolLM2-135M-Instruct, yes/no log-probabilities)",
            "",
            "| set | queries | top n | s / query (CPU) | passage tokens / query | first stage | LLM order "
            "| 0.5 fused + 0.5 LLM |",
            "|---|---:|---:|---:|---:|---|---|---|",
        ]
        for s, v in report["sets"].items():
            r = v.get("rerank")
            if not r:
                continue

            def f(m: dict[str, float]) -> str:
                return f"{m['ndcg@10']:.4f} / {m['recall@10']:.4f}"

            lines.append(
                f"| {s} | {r['queries']} | {r['top_n']} | {r['seconds_per_query']} "
                f"| {r['passage_tokens_per_query']} "
                f"| {f(r['first stage (same queries)'])} | {f(r['reranked (LLM order of the top n)'])} "
                f"| {f(r['reranked (0.5 fused + 0.5 LLM, min-max)'])} |"
            )
        lines += [
            "",
            f"First stage: {report['rerank_first_stage']}. Columns: nDCG@10 / R@10 on those queries.",
            "",
        ]
    lines += report.get("notes", [])
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", action="append", help="BEIR folder, optionally :MAX_QUERIES")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/ragtune-ranking"))
    parser.add_argument("--rerank-queries", type=int, default=50, help="0 skips the reranking stage")
    parser.add_argument("--rerank-top", type=int, default=20)
    parser.add_argument("--model", type=Path, default=Path("models/smollm2-135m-instruct"))
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    sets = args.dataset or [s for s in DEFAULT_SETS if Path(s.split(":")[0]).exists()]
    report: dict[str, Any] = {"sets": {}, "groups": {}}
    reranker = Reranker(args.model) if args.rerank_queries else None
    first_stage = "convex z-score a=0.5"
    for spec in sets:
        root, _, maxq = spec.partition(":")
        corpus = load_corpus(Path(root), int(maxq) if maxq else None, args.cache)
        ms = methods(corpus)
        entry: dict[str, Any] = {
            "documents": len(set(corpus.doc_of)),
            "chunks": len(corpus.ids),
            "queries": len(corpus.qids),
            "methods": {},
        }
        t0 = time.perf_counter()
        for name, (group, fn) in ms.items():
            report["groups"][name] = group
            rankings = {q: fn(i)[:DEPTH] for i, q in enumerate(corpus.qids)}
            entry["methods"][name] = metrics(corpus, rankings)
        print(f"{corpus.name}: {len(ms)} methods in {time.perf_counter() - t0:.1f} s", flush=True)
        if reranker is not None:
            entry["rerank"] = rerank_experiment(
                corpus, ms[first_stage][1], reranker, args.rerank_queries, args.rerank_top
            )
            print(f"{corpus.name}: rerank {entry['rerank']}", flush=True)
        report["sets"][corpus.name] = entry
        print(
            json.dumps({k: v for k, v in entry["methods"].items() if ms[k][0] != "bm25"}, indent=1),
            flush=True,
        )
    report.update(
        {
            "command": "nice -n 10 .venv/bin/python -m bench.ranking "
            + " ".join(f"--dataset {s}" for s in sets)
            + f" --rerank-queries {args.rerank_queries} --rerank-top {args.rerank_top}",
            "date": dt.datetime.now().isoformat(timespec="seconds"),
            "rerank_first_stage": first_stage,
            "machine": {
                "nproc": os.cpu_count(),
                "cpu": cpu_model(),
                "python": platform.python_version(),
                "loadavg": [round(x, 2) for x in os.getloadavg()],
            },
        }
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ranking.json").write_text(json.dumps(report, indent=2) + "\n")
    write_markdown(report, args.out / "ranking.md")
    print((args.out / "ranking.md").read_text())


if __name__ == "__main__":
    main()
