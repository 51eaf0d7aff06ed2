"""Typed dependencies: the services the lifespan hung on `app.state`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, Request

from ragtune.retrieval import Library
from ragtune.serving.adapters import AdapterRegistry
from ragtune.serving.canary import Canary
from ragtune.serving.chat import GenerationService
from ragtune.serving.converge import Converger
from ragtune.serving.engine import Engine
from ragtune.serving.metrics import Metrics
from ragtune.serving.resolve import ModelResolver
from ragtune.serving.settings import Settings


def _state(attr: str) -> Callable[[Request], Any]:
    def get(request: Request) -> Any:
        return getattr(request.app.state, attr)

    return get


GenerationDep = Annotated[GenerationService, Depends(_state("generation"))]
AdaptersDep = Annotated[AdapterRegistry, Depends(_state("adapters"))]
ResolverDep = Annotated[ModelResolver, Depends(_state("resolver"))]
LibraryDep = Annotated[Library, Depends(_state("library"))]
MetricsDep = Annotated[Metrics, Depends(_state("metrics"))]
EngineDep = Annotated[Engine, Depends(_state("engine"))]
SettingsDep = Annotated[Settings, Depends(_state("settings"))]
CanaryDep = Annotated[Canary, Depends(_state("canary"))]
ConvergerDep = Annotated[Converger, Depends(_state("converger"))]
