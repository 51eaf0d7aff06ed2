"""Typed dependencies: the services the lifespan hung on `app.state`."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from retrieval import Library
from serving.adapters import AdapterRegistry
from serving.chat import GenerationService
from serving.engine import Engine
from serving.metrics import Metrics
from serving.resolve import ModelResolver
from serving.settings import Settings


def _generation(request: Request) -> GenerationService:
    return request.app.state.generation  # type: ignore[no-any-return]


def _adapters(request: Request) -> AdapterRegistry:
    return request.app.state.adapters  # type: ignore[no-any-return]


def _resolver(request: Request) -> ModelResolver:
    return request.app.state.resolver  # type: ignore[no-any-return]


def _library(request: Request) -> Library:
    return request.app.state.library  # type: ignore[no-any-return]


def _metrics(request: Request) -> Metrics:
    return request.app.state.metrics  # type: ignore[no-any-return]


def _engine(request: Request) -> Engine:
    return request.app.state.engine  # type: ignore[no-any-return]


def _settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


GenerationDep = Annotated[GenerationService, Depends(_generation)]
AdaptersDep = Annotated[AdapterRegistry, Depends(_adapters)]
ResolverDep = Annotated[ModelResolver, Depends(_resolver)]
LibraryDep = Annotated[Library, Depends(_library)]
MetricsDep = Annotated[Metrics, Depends(_metrics)]
EngineDep = Annotated[Engine, Depends(_engine)]
SettingsDep = Annotated[Settings, Depends(_settings)]
