"""`ragtune eval qa`: answer accuracy, citations, grounding and abstention, per model and RAG setting.

Every question goes through the OpenAI API exactly as a client's would: to a running server
(`--server URL`), or to the app built in this process (the same routes, prompt assembly and
engine, over an in-memory transport). Three phases, each with the collection put in the state
it needs first (only changed documents are re-embedded):

- `answer`: the corpus as it is. Answer accuracy (normalised containment, token F1), citation
  accuracy (the gold passage is among `sources` and every `[n]` the answer cites points at
  it), the dataset's behaviour score, latency. Unanswerable questions (training.qa: the gold
  passage is on the topic but does not answer) count only in their own rate: the abstention.
- `counterfactual` (RAG on only): each gold passage's answer span replaced by another answer of
  the same type (training.qa.counterfactuals). Grounded rate: the answer holds the substitute
  and not the original; a model answering from memory gives the original.
- `abstain` (RAG on only): the gold passages removed (half of them at a time, so the rest of
  the corpus remains as distractors). Abstention rate: the answer says the sources do not
  answer. Questions whose answer still appears in a retrieved source are left out.

serving.qa_score judges the answers. They are kept in a JSONL file as they arrive; a rerun with
the same settings resumes from it, and an interrupted run reports what it finished.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from ragtune.core.errors import RagtuneError
from ragtune.serving.qa_score import load_behaviour_scorer, summarize
from ragtune.training.qa import (
    QASet,
    Question,
    counterfactuals,
    load_qa_set,
    split_questions,
)

PHASES = ("answer", "counterfactual", "abstain")


class EvalError(RagtuneError):
    code = "eval_error"


@dataclass(frozen=True)
class Config:
    model: str
    rag: bool

    @property
    def label(self) -> str:
        return f"{self.model}+RAG" if self.rag else self.model


@dataclass
class QAEvalOptions:
    models: list[str]
    rag: list[bool]
    split: str = "heldout"
    limit: int | None = None
    top_k: int = 4
    mode: str = "hybrid"
    max_tokens: int = 96
    concurrency: int = 16
    collection: str | None = None
    phases: tuple[str, ...] = PHASES
    seed: int = 0


# -- the client: a running server, or the app in this process ------------------------------------


@asynccontextmanager
async def in_process_client(settings: Any) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client over the app itself: the server's code path without a socket."""
    from ragtune.serving.app import create_app

    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://ragtune", timeout=600) as client:
            yield client


@asynccontextmanager
async def server_client(url: str, api_key: str | None) -> AsyncIterator[httpx.AsyncClient]:
    base = url.rstrip("/")
    base = base[: -len("/v1")] if base.endswith("/v1") else base
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=600) as client:
        try:
            resp = await client.get("/health")
        except httpx.HTTPError as exc:
            raise EvalError(f"cannot reach the server at {url}: {exc}", param="server") from None
        if resp.status_code >= 400:
            raise EvalError(f"the server at {url} is not healthy: HTTP {resp.status_code}", param="server")
        yield client


async def _call(client: httpx.AsyncClient, method: str, path: str, **kw: Any) -> Any:
    resp = await client.request(method, path, **kw)
    if resp.status_code >= 400:
        try:
            message = resp.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = resp.text[:300]
        raise EvalError(f"{method} {path}: HTTP {resp.status_code}: {message}")
    return resp.json() if resp.content else None


# -- collection states ---------------------------------------------------------------------------


class CollectionState:
    """Puts the evaluation collection in the state a phase needs, through the documents API."""

    def __init__(self, client: httpx.AsyncClient, name: str, qa: QASet, *, owned: bool = True):
        self.client, self.name, self.qa = client, name, qa
        self.owned = owned  # the eval's own `qa-NAME`: documents not in the set are stale there
        self.present: set[str] = set()

    async def ensure(self) -> None:
        listed = await _call(self.client, "GET", "/v1/collections")
        names = {c["name"] for c in listed["data"]}
        if self.name not in names:
            await _call(self.client, "POST", "/v1/collections", json={"name": self.name})
        offset = 0
        while True:
            page = await _call(
                self.client,
                "GET",
                f"/v1/collections/{self.name}/documents",
                params={"offset": offset, "limit": 500},
            )
            docs = page["data"]
            self.present |= {d["id"] for d in docs}
            if len(docs) < 500:
                break
            offset += len(docs)

    async def set(self, *, texts: dict[str, str], absent: set[str], progress: Callable[[str], None]) -> None:
        """Hold every passage (with `texts` overriding some), except the `absent` ones."""
        docs = [
            {"id": p.id, "text": texts.get(p.id, p.text), **({"title": p.title} if p.title else {})}
            for p in self.qa.passages.values()
            if p.id not in absent
        ]
        for start in range(0, len(docs), 200):
            progress(f"indexing {min(start + 200, len(docs))}/{len(docs)} passages")
            await _call(
                self.client,
                "POST",
                f"/v1/collections/{self.name}/documents",
                json={"documents": docs[start : start + 200]},
            )
        self.present |= {d["id"] for d in docs}
        stale = self.present - set(self.qa.passages) if self.owned else set()
        for doc_id in sorted((absent | stale) & self.present):
            await _call(self.client, "DELETE", f"/v1/collections/{self.name}/documents/{doc_id}")
            self.present.discard(doc_id)


# -- asking --------------------------------------------------------------------------------------


async def resolve_models(client: httpx.AsyncClient, models: list[str]) -> dict[str, str]:
    """Map each requested name to the API's model name; `base` means the base model.

    A name that is not served yet but is a folder under the server's adapters/ is loaded, and so
    is the adapter a requested profile names, so that no question is asked before all load.
    """
    listed = (await _call(client, "GET", "/v1/models"))["data"]
    cards = {m["id"]: m for m in listed}
    base = next((m["id"] for m in listed if m.get("kind") == "base"), listed[0]["id"])
    out = {}
    for name in models:
        if name == "base":
            out[name] = base
            continue
        card = cards.get(name)
        if card is None:
            adapter = name  # not served: an adapter folder of that name?
        elif card.get("kind") == "profile":
            adapter = card.get("parent")  # the base model's name when the profile has no adapter
        else:
            adapter = None
        if adapter and adapter not in cards:
            resp = await client.post("/v1/adapters", json={"name": adapter, "path": adapter})
            if resp.status_code >= 400:
                known = ", ".join(["base", *[k for k in cards if k != base]])
                what = (
                    f"unknown model {name!r}: not served ({known}) and not"
                    if card is None
                    else f"model {name!r} uses adapter {adapter!r}, which is not loaded and not"
                )
                raise EvalError(
                    f"{what} loadable as an adapter folder: "
                    f"{resp.json().get('error', {}).get('message', resp.text[:200])}",
                    param="models",
                )
            cards[adapter] = {"id": adapter, "kind": "adapter"}
        out[name] = name
    return out


async def model_versions(client: httpx.AsyncClient, names: dict[str, str]) -> dict[str, str]:
    """What each model answers with now: an adapter's content fingerprint, a profile's adapter's
    (or `base`). Answers recorded under another version are asked again, so a retrained adapter
    is never scored with its predecessor's answers."""
    cards = {m["id"]: m for m in (await _call(client, "GET", "/v1/models"))["data"]}
    adapters = (await _call(client, "GET", "/v1/adapters"))["data"]
    prints = {a["name"]: a.get("fingerprint", "") for a in adapters}
    out = {}
    for name, served in names.items():
        card = cards.get(served, {})
        adapter = served if card.get("kind") == "adapter" else card.get("parent")
        out[name] = prints.get(adapter or "", "") or "base"
    return out


async def ask(
    client: httpx.AsyncClient, *, model: str, question: str, rag: dict | bool, max_tokens: int
) -> dict[str, Any]:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": question}],
        "temperature": 0,
        "max_tokens": max_tokens,
        "rag": rag,
    }
    started = time.perf_counter()
    data = await _call(client, "POST", "/v1/chat/completions", json=body)
    return {
        "reply": data["choices"][0]["message"]["content"] or "",
        "sources": [s["document_id"] for s in data.get("sources") or []],
        "source_texts": [s["text"] for s in data.get("sources") or []],
        "latency_s": round(time.perf_counter() - started, 4),
    }


# -- the run -------------------------------------------------------------------------------------


def _run_key(dataset: Path, opts: QAEvalOptions) -> str:
    spec = json.dumps(
        [str(dataset.resolve()), opts.split, opts.limit, opts.top_k, opts.mode, opts.max_tokens, opts.seed],
    )
    return hashlib.sha256(spec.encode()).hexdigest()[:12]


async def run_qa_eval(
    client: httpx.AsyncClient,
    dataset: Path,
    opts: QAEvalOptions,
    *,
    results_file: Path,
    progress: Callable[[str, int, int], None] = lambda *_: None,
) -> dict[str, Any]:
    qa = load_qa_set(dataset)
    questions = split_questions(qa, opts.split)[: opts.limit]
    if not questions:
        raise EvalError(f"no questions in the {opts.split!r} split of {dataset}", param="dataset")
    names = await resolve_models(client, opts.models)
    versions = await model_versions(client, names)
    configs = [Config(m, r) for m in opts.models for r in opts.rag]
    collection = opts.collection or f"qa-{qa.name}".lower()[:60]
    state = CollectionState(client, collection, qa, owned=opts.collection is None)
    await state.ensure()
    cf_texts, cf = counterfactuals(qa, questions, seed=opts.seed)
    gold_docs = sorted({q.doc_id for q in questions})
    halves = [set(gold_docs[0::2]), set(gold_docs[1::2])]

    run = _run_key(dataset, opts)
    done: dict[tuple[str, str, str], dict[str, Any]] = {}
    if results_file.exists():
        for line in results_file.read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue  # a line cut by an interruption
            if row.get("run") == run and row.get("version") == versions.get(row.get("model")):
                done[(row["phase"], row["config"], row["qid"])] = row
    results_file.parent.mkdir(parents=True, exist_ok=True)
    sink = results_file.open("a")
    sem = asyncio.Semaphore(opts.concurrency)

    async def one(phase: str, cfg: Config, q: Question, extra: dict[str, Any]) -> None:
        key = (phase, cfg.label, q.id)
        if key in done:
            return
        rag: dict | bool = (
            {"collection": collection, "top_k": opts.top_k, "mode": opts.mode} if cfg.rag else False
        )
        async with sem:
            got = await ask(
                client, model=names[cfg.model], question=q.text, rag=rag, max_tokens=opts.max_tokens
            )
        row = {
            "run": run,
            "phase": phase,
            "config": cfg.label,
            "model": cfg.model,
            "version": versions[cfg.model],
            "rag": cfg.rag,
            "qid": q.id,
            **extra,
            **got,
        }
        done[key] = row
        sink.write(json.dumps(row, ensure_ascii=False) + "\n")
        sink.flush()

    async def phase_run(phase: str, items: list[tuple[Config, Question, dict[str, Any]]]) -> None:
        todo = [it for it in items if (phase, it[0].label, it[1].id) not in done]
        total, finished = len(items), len(items) - len(todo)
        progress(phase, finished, total)

        async def tracked(it: tuple[Config, Question, dict[str, Any]]) -> None:
            nonlocal finished
            await one(phase, *it)
            finished += 1
            progress(phase, finished, total)

        await asyncio.gather(*(tracked(it) for it in todo))

    note = lambda msg: progress(msg, 0, 0)  # noqa: E731 - a one-line adapter
    try:
        if "answer" in opts.phases:
            await state.set(texts={}, absent=set(), progress=note)
            await phase_run("answer", [(c, q, {}) for c in configs for q in questions])
        rag_configs = [c for c in configs if c.rag]
        if "counterfactual" in opts.phases and rag_configs and cf:
            await state.set(texts=cf_texts, absent=set(), progress=note)
            items = [(c, x.question, {"substitute": x.substitute}) for c in rag_configs for x in cf]
            await phase_run("counterfactual", items)
        if "abstain" in opts.phases and rag_configs:
            for half in halves:
                await state.set(texts={}, absent=half, progress=note)
                items = [(c, q, {}) for c in rag_configs for q in questions if q.doc_id in half]
                await phase_run("abstain", items)
    finally:
        sink.close()
        await state.set(texts={}, absent=set(), progress=note)

    rows = list(done.values())
    scorer = load_behaviour_scorer(dataset)
    return {
        "dataset": str(dataset),
        "split": opts.split,
        "questions": len(questions),
        "counterfactual_questions": len(cf),
        "top_k": opts.top_k,
        "mode": opts.mode,
        "collection": collection,
        "configs": summarize(rows, qa, scorer),
    }


def summarize_file(results_file: Path, dataset: Path, opts: QAEvalOptions) -> dict[str, Any]:
    """What an interrupted run finished: the summary over the answers already on disk."""
    qa = load_qa_set(dataset)
    run = _run_key(dataset, opts)
    latest: dict[tuple[str, str, str], dict[str, Any]] = {}
    if results_file.exists():
        for line in results_file.read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if row.get("run") == run:  # a later answer (a retrained model's) replaces an earlier one
                latest[(row["phase"], row["config"], row["qid"])] = row
    return {
        "dataset": str(dataset),
        "partial": True,
        "configs": summarize(list(latest.values()), qa, load_behaviour_scorer(dataset)),
    }
