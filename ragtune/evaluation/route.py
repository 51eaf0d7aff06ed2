"""`ragtune eval route`: how well `model: auto` chooses, on a mixed question set.

A data set is a folder (examples/route-mix/make_data.py builds one): `domains.json` maps each
domain to its description, `DOMAIN/corpus.jsonl` holds its documents (id, title, text), and
`questions.jsonl` holds questions (id, text, domain or null for off-domain, split 'dev' or
'test'). Each domain becomes a collection behind a profile of the same name; the questions are
routed by serving.routing with the server's own settings. Reported: in-domain accuracy,
off-domain fallback, the confusion, and the time routing takes with the question's embedding
already made (what a routed request adds: its retrieval reuses the embedding) and with it made
afresh (what a fallback adds). `--calibrate` searches the floor and margin on one split.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from ragtune.core.errors import RagtuneError
from ragtune.evaluation.report import cpu_model
from ragtune.retrieval import Document, Library
from ragtune.serving.auth import UNLIMITED
from ragtune.serving.routing import CHUNKS, Router
from ragtune.serving.settings import ProfileSettings, RoutingSettings, Settings

BASE = "base"  # the fallback's name in this evaluation


def load_route_set(path: Path) -> tuple[dict[str, str], list[dict[str, Any]]]:
    """(domain -> description, questions) of a routing set; a bad folder is a RagtuneError."""
    try:
        domains: dict[str, str] = json.loads((path / "domains.json").read_text())
        questions = [json.loads(x) for x in (path / "questions.jsonl").read_text().splitlines() if x.strip()]
    except (OSError, json.JSONDecodeError) as exc:
        raise RagtuneError(f"--dataset {path}: not a routing set ({exc})", param="dataset") from None
    missing = [d for d in domains if not (path / d / "corpus.jsonl").is_file()]
    unknown = {q["domain"] for q in questions if q.get("domain") and q["domain"] not in domains}
    if missing or unknown:
        raise RagtuneError(
            f"--dataset {path}: no corpus.jsonl for {missing}; questions name unknown domains {unknown}",
            param="dataset",
        )
    return domains, questions


def index_domains(library: Library, path: Path, domains: Sequence[str]) -> dict[str, int]:
    """Each domain's documents in a collection of its name (unchanged documents cost nothing)."""
    counts = {}
    for name in domains:
        coll = library.open(name) if name in library.names() else library.create(name)
        rows = [json.loads(x) for x in (path / name / "corpus.jsonl").read_text().splitlines() if x.strip()]
        docs = [Document(id=r["id"], text=r["text"], title=r.get("title", "")) for r in rows]
        coll.upsert(docs)
        counts[name] = coll.stats()["chunks"]
    return counts


def router_for(
    library: Library,
    domains: dict[str, str],
    settings: RoutingSettings,
    *,
    descriptions: bool = True,
    chunks: int = CHUNKS,
) -> Router:
    profiles = {
        name: ProfileSettings(collection=name, description=desc if descriptions else None)
        for name, desc in domains.items()
    }
    return Router(
        library=library,
        profiles=lambda: profiles,
        base_name=BASE,
        adapters=None,
        settings=settings,
        chunks=chunks,
    )


def score_all(router: Router, questions: Sequence[dict[str, Any]]) -> list[dict[str, float]]:
    candidates = router.candidates(UNLIMITED)
    return [router.scores(q["text"], candidates) for q in questions]


def summarize(
    router: Router, questions: Sequence[dict[str, Any]], scores: Sequence[dict[str, float]]
) -> dict[str, Any]:
    """Accuracy (in-domain questions routed to their domain), fallback (off-domain questions
    that fell back), the in-domain fallback rate and the confusion, under router.settings."""
    confusion: Counter[str] = Counter()
    right = fell_in = fell_off = n_in = n_off = 0
    per_domain: dict[str, list[int]] = {}
    for q, s in zip(questions, scores, strict=True):
        route = router.decide(s)
        got = BASE if route.fallback else route.chosen
        want = q.get("domain") or BASE
        confusion[f"{want} -> {got}"] += 1
        if q.get("domain"):
            n_in += 1
            right += got == want
            fell_in += route.fallback
            per_domain.setdefault(want, [0, 0])
            per_domain[want][0] += got == want
            per_domain[want][1] += 1
        else:
            n_off += 1
            fell_off += route.fallback
    return {
        "in_domain": n_in,
        "off_domain": n_off,
        "accuracy": right / n_in if n_in else None,
        "in_domain_fallback": fell_in / n_in if n_in else None,
        "off_domain_fallback": fell_off / n_off if n_off else None,
        "per_domain": {d: round(a / n, 4) for d, (a, n) in sorted(per_domain.items())},
        "errors": {k: v for k, v in sorted(confusion.items()) if k.split(" -> ")[0] != k.split(" -> ")[1]},
    }


def calibrate(
    router: Router, questions: Sequence[dict[str, Any]], scores: Sequence[dict[str, float]]
) -> dict:
    """The floor and margin that maximise the mean of in-domain accuracy and off-domain
    fallback (ties: the larger margin, then the lower floor)."""
    best: tuple[float, float, float] | None = None
    for floor in np.arange(0.20, 0.80, 0.01):
        for margin in np.arange(0.0, 0.20, 0.005):
            router.settings = RoutingSettings(
                min_score=round(float(floor), 3), min_margin=round(float(margin), 3)
            )
            s = summarize(router, questions, scores)
            value = ((s["accuracy"] or 0) + (s["off_domain_fallback"] or 0)) / 2
            key = (value, float(margin), -float(floor))
            if best is None or key > best:
                best = key
    assert best is not None
    return {"min_score": round(-best[2], 3), "min_margin": round(best[1], 3), "objective": round(best[0], 4)}


def latency(
    router: Router, questions: Sequence[dict[str, Any]], embedders: Sequence[Any], *, top_k: int = 5
) -> dict[str, float]:
    """Routing time per question (ms): `cached`, the question's embedding already made (a routed
    request's retrieval reuses it, so this is what routing adds); `cold`, embedding included
    (what a fallback without retrieval adds). `paired`, for in-domain questions: the time to a
    request's prompt (routing, then the chosen profile's hybrid search) less the same search for
    the profile named, caches emptied before each: what `auto` adds before the first token."""
    cold, cached, paired = [], [], []

    def fresh() -> float:
        for e in embedders:
            e.clear_cache()
        return time.perf_counter()

    for q in questions:
        started = fresh()
        route = router.route([q["text"]], UNLIMITED)
        cold.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        router.route([q["text"]], UNLIMITED)
        cached.append((time.perf_counter() - started) * 1000)
        if q.get("domain") and not route.fallback:
            started = fresh()
            router.library.open(q["domain"]).search(q["text"], k=top_k)
            named = time.perf_counter() - started
            started = fresh()
            chosen = router.route([q["text"]], UNLIMITED).chosen
            router.library.open(chosen).search(q["text"], k=top_k)
            paired.append((time.perf_counter() - started - named) * 1000)

    def pct(xs: list[float], p: int) -> float:
        return round(float(np.percentile(xs, p)), 3) if xs else float("nan")

    return {
        "added_p50_ms": pct(cached, 50),
        "added_p99_ms": pct(cached, 99),
        "with_embedding_p50_ms": pct(cold, 50),
        "with_embedding_p99_ms": pct(cold, 99),
        "to_prompt_added_p50_ms": pct(paired, 50),
        "to_prompt_added_p99_ms": pct(paired, 99),
    }


def run_route_eval(
    settings: Settings,
    dataset: Path,
    *,
    split: str,
    calibrate_on: str | None,
    chunks: int = CHUNKS,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    domains, questions = load_route_set(dataset)
    indexes = dataset / ".indexes"
    library = Library(indexes, settings.retrieval)
    try:
        progress(f"indexing {len(domains)} domains into {indexes} ...")
        counts = index_domains(library, dataset, list(domains))
        routing = settings.serving.routing.model_copy()
        router = router_for(library, domains, routing, chunks=chunks)
        result: dict[str, Any] = {
            "dataset": str(dataset),
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "cpu": cpu_model(),
            "embedder": library.embedder().label,
            "profiles": len(domains),
            "chunks": counts,
            "split": split,
            "chunks_averaged": chunks,
        }
        if calibrate_on:
            dev = [q for q in questions if q.get("split") == calibrate_on]
            progress(f"calibrating on {len(dev)} {calibrate_on} questions ...")
            result["calibrated"] = {"split": calibrate_on, **calibrate(router, dev, score_all(router, dev))}
        router.settings = routing
        result["settings"] = {"min_score": routing.min_score, "min_margin": routing.min_margin}
        chosen = [q for q in questions if q.get("split") == split] if split != "all" else questions
        progress(f"routing {len(chosen)} {split} questions ...")
        result["summary"] = summarize(router, chosen, score_all(router, chosen))
        # Without descriptions: what the collections' documents alone decide.
        bare = router_for(library, domains, routing, descriptions=False, chunks=chunks)
        result["without_descriptions"] = summarize(bare, chosen, score_all(bare, chosen))
        progress("timing ...")
        embedders = [library.open(d).embedder for d in domains] + [library.embedder()]
        unique = list({id(e): e for e in embedders}.values())
        result["latency"] = latency(router, chosen, unique, top_k=settings.retrieval.top_k)
        result["questions"] = [
            {"id": q["id"], "domain": q.get("domain"), **router.decide(s).to_json()}
            for q, s in zip(chosen, score_all(router, chosen), strict=True)
        ]
        return result
    finally:
        library.close()
