"""`model: "auto"`: the profile whose knowledge is nearest the question, or a configured fallback.

Each profile the request's key may use is scored by the cosine of the question's embedding to
what the profile knows: the mean of its collection's `chunks` nearest chunks (the collection's
own dense index answers that), its `description`, and the questions its adapter was trained on
(the adapter manifest's `data`); the profile's score is the best of these. A profile with
neither a collection nor a description is not a candidate. The best profile is
chosen when it clears `routing.min_score` and leads the second by `routing.min_margin`; otherwise
the request goes to `routing.fallback` (the base model without retrieval unless set), never to
a guess. When the last question alone is not enough, the conversation's recent user turns
together get one more try (a follow-up such as "and on weekends?" leans on them).

The query's embedding is the one retrieval then reuses (the embedder's query cache), so a routed
request pays only the index look-ups. No FastAPI here: `GenerationService` calls `route`.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ragtune.core.errors import RagtuneError
from ragtune.retrieval import Library
from ragtune.serving.adapters import AdapterRegistry
from ragtune.serving.auth import Scope
from ragtune.serving.errors import Forbidden
from ragtune.serving.metrics import Metrics
from ragtune.serving.settings import ProfileSettings, RoutingSettings

AUTO = "auto"
CHUNKS = 3  # nearest chunks averaged per collection: one lucky chunk should not decide alone
EXAMPLES = 256  # training questions kept per adapter
TURNS = 3  # user turns joined when the last question alone does not decide
_QUESTION = "\n\nQuestion: "  # how core.prompt.with_context ends a user turn that carries sources
log = logging.getLogger("ragtune.serving")

Reason = Literal["confident", "below_floor", "close_call", "no_candidates", "only_choice"]


@dataclass(frozen=True)
class Route:
    """Where an `auto` request went and why; `scores` are the candidates', best first."""

    chosen: str
    fallback: bool
    reason: Reason
    scores: dict[str, float] = field(default_factory=dict)
    on: Literal["question", "conversation"] = "question"

    def to_json(self) -> dict[str, Any]:
        return {
            "chosen": self.chosen,
            "fallback": self.fallback,
            "reason": self.reason,
            "on": self.on,
            "scores": {k: round(v, 4) for k, v in self.scores.items()},
        }


class Router:
    def __init__(
        self,
        *,
        library: Library,
        profiles: Callable[[], dict[str, ProfileSettings]],
        base_name: str,
        adapters: AdapterRegistry | None,
        settings: RoutingSettings,
        metrics: Metrics | None = None,
        chunks: int = CHUNKS,
    ):
        """`profiles` gives the served profiles now (they change over HTTP); `base_name` is the
        base model's name, the fallback unless `settings.fallback` names another."""
        self.library = library
        self.profiles = profiles
        self.base_name = base_name
        self.adapters = adapters
        self.settings = settings
        self.metrics = metrics
        self.chunks = chunks
        self._descriptions: dict[str, np.ndarray] = {}
        self._examples: dict[tuple[str, str, float], np.ndarray] = {}
        self._lock = threading.Lock()

    # -- candidates ----------------------------------------------------------------------

    def candidates(self, scope: Scope) -> dict[str, ProfileSettings]:
        """The profiles `auto` may choose for this key: those it may name, whose collection it may
        read and whose adapter is loaded. Nothing else is looked at, so nothing else can leak.
        A profile needs a collection or a description: one with neither (the built-in `grounded`,
        which reads the collection a request names) knows nothing of its own to be chosen for."""
        out = {}
        for name, profile in sorted(self.profiles().items()):
            if name == AUTO or not scope.allows_profile(name, profile):
                continue
            if not (profile.collection or profile.description):
                continue
            if profile.adapter and (self.adapters is None or self.adapters.get(profile.adapter) is None):
                continue
            out[name] = profile
        return out

    def fallback(self) -> str:
        return self.settings.fallback or self.base_name

    def lists_auto(self, scope: Scope) -> bool:
        """Whether `/v1/models` shows `auto` to this key: when it has a choice to make."""
        only = self._only_choice(scope)
        return only is None and bool(self.candidates(scope))

    # -- routing -------------------------------------------------------------------------

    def route(self, turns: Sequence[str], scope: Scope) -> Route:
        """The model for a request whose user turns are `turns` (the question last)."""
        started = time.perf_counter()
        route = self._route([t for t in turns if t.strip()], scope)
        if not route.fallback or scope.allows_model(route.chosen):
            self._observe(route, time.perf_counter() - started)
            return route
        shown = ", ".join(f"{k} {v:.2f}" for k, v in route.scores.items()) or "no profile to choose"
        raise Forbidden(
            f"model 'auto' found no profile that clearly fits the question ({shown}), and this API key "
            f"may not use the fallback model {route.chosen!r}; name a model instead",
            param="model",
        )

    def _route(self, turns: list[str], scope: Scope) -> Route:
        only = self._only_choice(scope)
        if only is not None:
            return Route(only, False, "only_choice")
        candidates = self.candidates(scope)
        if not candidates or not turns:
            return Route(self.fallback(), True, "no_candidates")
        route = self.decide(self.scores(turns[-1], candidates))
        if route.fallback and len(turns) > 1:
            joined = self.decide(self.scores(" ".join(turns[-TURNS:]), candidates))
            if not joined.fallback:
                return Route(joined.chosen, False, joined.reason, joined.scores, on="conversation")
        return route

    def _only_choice(self, scope: Scope) -> str | None:
        """A key limited to one profile: `auto` is that profile, as if it were named."""
        if scope.models is not None and len(scope.models) == 1:
            (name,) = scope.models
            profile = self.profiles().get(name)
            if profile is not None and scope.allows_profile(name, profile):
                return name
        return None

    def decide(self, scores: dict[str, float]) -> Route:
        """Choose from scores (best first): the best when it clears the floor and the margin."""
        ranked = list(scores.values())
        if not ranked:
            return Route(self.fallback(), True, "no_candidates", scores)
        best = next(iter(scores))
        if ranked[0] < self.settings.min_score:
            return Route(self.fallback(), True, "below_floor", scores)
        if len(ranked) > 1 and ranked[0] - ranked[1] < self.settings.min_margin:
            return Route(self.fallback(), True, "close_call", scores)
        return Route(best, False, "confident", scores)

    def scores(self, query: str, candidates: dict[str, ProfileSettings]) -> dict[str, float]:
        """Each candidate's score for `query` (the best of its signals), best first; a profile
        with nothing to compare (no collection, description or training questions) has none."""
        out: dict[str, float] = {}
        qvec: np.ndarray | None = None
        for name, profile in candidates.items():
            signals = []
            if profile.collection:
                near = self._collection_score(profile.collection, query)
                if near is not None:
                    signals.append(near)
            if profile.description or profile.adapter:
                if qvec is None:
                    qvec = self.library.embedder().embed_query(query)
                if profile.description:
                    signals.append(float(self._description(profile.description) @ qvec))
                examples = self._adapter_examples(profile.adapter) if profile.adapter else None
                if examples is not None and len(examples):
                    signals.append(_mean_top(examples @ qvec, self.chunks))
            if signals:
                out[name] = max(signals)
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))

    def _collection_score(self, name: str, query: str) -> float | None:
        try:
            collection = self.library.open(name)
            # The collection's own embedder: the query vector retrieval then finds in its cache.
            nearest = collection.nearest_scores(collection.embedder.embed_query(query), self.chunks)
        except RagtuneError as exc:  # a dropped or unreadable collection: this signal is missing
            log.debug("routing: collection %r not scored: %s", name, exc.message)
            return None
        return float(np.mean(nearest)) if len(nearest) else None

    def _description(self, text: str) -> np.ndarray:
        with self._lock:
            vec = self._descriptions.get(text)
        if vec is None:
            vec = self.library.embedder().embed([text])[0]
            with self._lock:
                self._descriptions[text] = vec
        return vec

    def _adapter_examples(self, adapter: str) -> np.ndarray | None:
        """The embedded user questions of the adapter's training data (manifest `data`, a JSONL
        file), once per adapter version; None when that file is not here."""
        entry = self.adapters.get(adapter) if self.adapters is not None else None
        manifest = entry.info.manifest if entry is not None else None
        data = Path(str(manifest.get("data"))) if manifest and manifest.get("data") else None
        if entry is None or data is None or data.suffix != ".jsonl" or not data.is_file():
            return None
        key = (str(entry.ref.path), str(data), data.stat().st_mtime)
        with self._lock:
            found = self._examples.get(key)
        if found is None:
            questions = training_questions(data)
            found = self.library.embedder().embed(questions) if questions else np.empty((0, 0))
            with self._lock:
                self._examples[key] = found
            log.info("routing: %d training questions of adapter %r embedded", len(questions), adapter)
        return found

    def _observe(self, route: Route, seconds: float) -> None:
        log.info(
            "route: auto -> %s (%s%s) %s",
            route.chosen,
            route.reason,
            ", on the conversation" if route.on == "conversation" else "",
            " ".join(f"{k}={v:.3f}" for k, v in route.scores.items()),
        )
        if self.metrics is not None:
            self.metrics.routes.labels(model=route.chosen, fallback=str(route.fallback).lower()).inc()
            self.metrics.route_seconds.observe(seconds)


def user_turns(messages: Sequence[dict[str, Any]]) -> list[str]:
    return [str(m["content"]) for m in messages if m.get("role") == "user"]


def training_questions(path: Path, limit: int = EXAMPLES) -> list[str]:
    """The last user turn of each chat in a training JSONL file, without a context block."""
    out: list[str] = []
    with path.open() as f:
        for line in f:
            try:
                messages = json.loads(line).get("messages") or []
            except (json.JSONDecodeError, AttributeError):
                continue
            users = [m.get("content") for m in messages if isinstance(m, dict) and m.get("role") == "user"]
            if users and isinstance(users[-1], str):
                out.append(users[-1].rsplit(_QUESTION, 1)[-1].strip())
            if len(out) >= limit:
                break
    return [q for q in out if q]


def _mean_top(scores: np.ndarray, k: int) -> float:
    top = np.sort(scores)[::-1][:k]
    return float(np.mean(top))
