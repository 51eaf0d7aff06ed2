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

evaluation.qa_score judges the answers. They are kept in a JSONL file as they arrive; a rerun with
the same settings resumes from it, and an interrupted run reports what it finished.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx
from filelock import FileLock, Timeout

from ragtune.evaluation.qa_api import (
    CollectionState,
    EvalError,
    ask,
    model_versions,
    resolve_models,
    source_bound,
)
from ragtune.evaluation.qa_score import load_behaviour_scorer, summarize
from ragtune.training.qa import (
    Counterfactual,
    QASet,
    Question,
    counterfactuals,
    load_qa_set,
    split_questions,
)

PHASES = ("answer", "counterfactual", "abstain")


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
    lock_dir: Path | None = None,
) -> dict[str, Any]:
    """Every phase for every config; with `lock_dir`, no other eval of this folder may use the
    same collection meanwhile (each phase rewrites its passages: two runs would read each other's)."""
    qa = load_qa_set(dataset)
    collection = opts.collection or f"qa-{qa.name}".lower()[:60]
    with _exclusive(lock_dir, collection):
        return await _run_qa_eval(client, qa, dataset, opts, collection, results_file, progress)


@contextmanager
def _exclusive(lock_dir: Path | None, collection: str) -> Iterator[None]:
    if lock_dir is None:
        yield
        return
    lock_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(lock_dir / f".eval-{collection}.lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise EvalError(
            f"another `ragtune eval qa` is using collection {collection!r} in {lock_dir}: its phases "
            "rewrite the passages this run would read; wait for it, or run this one in another folder",
            param="collection",
        ) from None
    try:
        yield
    finally:
        lock.release()


async def _run_qa_eval(
    client: httpx.AsyncClient,
    qa: QASet,
    dataset: Path,
    opts: QAEvalOptions,
    collection: str,
    results_file: Path,
    progress: Callable[[str, int, int], None],
) -> dict[str, Any]:
    questions = split_questions(qa, opts.split)[: opts.limit]
    if not questions:
        raise EvalError(f"no questions in the {opts.split!r} split of {dataset}", param="dataset")
    names = await resolve_models(client, opts.models)
    versions = await model_versions(client, names)
    bound = await source_bound(client, opts.models)  # `grounded` without retrieval is refused
    configs = [Config(m, r) for m in opts.models for r in opts.rag if r or m not in bound]
    if not configs:
        raise EvalError(
            f"{', '.join(sorted(bound))} answer only from retrieved sources: ask them with --rag on",
            param="rag",
        )
    state = CollectionState(client, collection, qa, owned=opts.collection is None)
    await state.ensure()
    cf_texts, cf = counterfactuals(qa, questions, seed=opts.seed)

    run = _run_key(dataset, opts)
    done = _answers_on_disk(results_file, run, versions)
    results_file.parent.mkdir(parents=True, exist_ok=True)
    with results_file.open("a") as sink:
        asking = _Asking(
            client, opts, collection=collection, names=names, run=run, versions=versions, done=done, sink=sink
        )
        await _run_phases(asking, state, configs, questions, cf_texts, cf, progress=progress)

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


Item = tuple[Config, Question, dict[str, Any]]  # who answers, what, and what the row records beside


def _answers_on_disk(
    results_file: Path, run: str, versions: dict[str, str]
) -> dict[tuple[str, str, str], dict[str, Any]]:
    """The answers a run with these settings already gave, from models of the same version:
    what a rerun resumes from."""
    done: dict[tuple[str, str, str], dict[str, Any]] = {}
    if results_file.exists():
        for line in results_file.read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue  # a line cut by an interruption
            if row.get("run") == run and row.get("version") == versions.get(row.get("model")):
                done[(row["phase"], row["config"], row["qid"])] = row
    return done


class _Asking:
    """Asks a phase's questions, `concurrency` at a time, skipping those already answered, and
    appends each answer to the results file as it arrives."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        opts: QAEvalOptions,
        *,
        collection: str,
        names: dict[str, str],
        run: str,
        versions: dict[str, str],
        done: dict[tuple[str, str, str], dict[str, Any]],
        sink: IO[str],
    ) -> None:
        self.client, self.opts, self.collection, self.names = client, opts, collection, names
        self.run, self.versions, self.done, self.sink = run, versions, done, sink
        self.sem = asyncio.Semaphore(opts.concurrency)

    async def one(self, phase: str, cfg: Config, q: Question, extra: dict[str, Any]) -> None:
        key = (phase, cfg.label, q.id)
        if key in self.done:
            return
        opts = self.opts
        rag: dict | bool = (
            {"collection": self.collection, "top_k": opts.top_k, "mode": opts.mode} if cfg.rag else False
        )
        async with self.sem:
            got = await ask(
                self.client, model=self.names[cfg.model], question=q.text, rag=rag, max_tokens=opts.max_tokens
            )
        row = {
            "run": self.run,
            "phase": phase,
            "config": cfg.label,
            "model": cfg.model,
            "version": self.versions[cfg.model],
            "rag": cfg.rag,
            "qid": q.id,
            **extra,
            **got,
        }
        self.done[key] = row
        self.sink.write(json.dumps(row, ensure_ascii=False) + "\n")
        self.sink.flush()

    async def phase(self, phase: str, items: list[Item], progress: Callable[[str, int, int], None]) -> None:
        todo = [it for it in items if (phase, it[0].label, it[1].id) not in self.done]
        total, finished = len(items), len(items) - len(todo)
        progress(phase, finished, total)

        async def tracked(it: Item) -> None:
            nonlocal finished
            await self.one(phase, *it)
            finished += 1
            progress(phase, finished, total)

        await asyncio.gather(*(tracked(it) for it in todo))


async def _run_phases(
    asking: _Asking,
    state: CollectionState,
    configs: list[Config],
    questions: list[Question],
    cf_texts: dict[str, str],
    cf: list[Counterfactual],
    *,
    progress: Callable[[str, int, int], None],
) -> None:
    """The phases asked for, each with the collection put in its state first; the collection is
    left as the data set has it, whatever happens."""
    phases = asking.opts.phases
    gold_docs = sorted({q.doc_id for q in questions})
    halves = [set(gold_docs[0::2]), set(gold_docs[1::2])]
    note = lambda msg: progress(msg, 0, 0)  # noqa: E731 - a one-line adapter
    try:
        if "answer" in phases:
            await state.set(texts={}, absent=set(), progress=note)
            await asking.phase("answer", [(c, q, {}) for c in configs for q in questions], progress)
        rag_configs = [c for c in configs if c.rag]
        if "counterfactual" in phases and rag_configs and cf:
            await state.set(texts=cf_texts, absent=set(), progress=note)
            items = [(c, x.question, {"substitute": x.substitute}) for c in rag_configs for x in cf]
            await asking.phase("counterfactual", items, progress)
        if "abstain" in phases and rag_configs:
            for half in halves:
                await state.set(texts={}, absent=half, progress=note)
                items = [(c, q, {}) for c in rag_configs for q in questions if q.doc_id in half]
                await asking.phase("abstain", items, progress)
    finally:
        await state.set(texts={}, absent=set(), progress=note)


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
