"""What the OpenAI `model` field names: the base model, an adapter, or a profile."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ragtune.core.errors import NotFoundError, RagtuneError
from ragtune.serving.adapters import AdapterRegistry
from ragtune.serving.auth import UNLIMITED, Scope
from ragtune.serving.responses import ModelCard
from ragtune.serving.settings import ProfileSettings


class ModelNotFound(NotFoundError):
    code = "model_not_found"


class ProfileNotFound(NotFoundError):
    code = "profile_not_found"


@dataclass(frozen=True)
class Target:
    kind: Literal["base", "adapter", "profile"]
    name: str
    adapter: str | None
    profile: ProfileSettings | None


class ModelResolver:
    def __init__(self, base_name: str, adapters: AdapterRegistry, profiles: dict[str, ProfileSettings]):
        self.base_name = base_name
        self._adapters = adapters
        self._profiles = dict(profiles)

    def resolve(self, model: str) -> Target:
        if model == self.base_name:
            return Target("base", model, None, None)
        if model in self._profiles:
            profile = self._profiles[model]
            return Target("profile", model, profile.adapter, profile)
        if self._adapters.get(model) is not None:
            return Target("adapter", model, model, None)
        raise self._not_found(model)

    @staticmethod
    def _not_found(model: str) -> ModelNotFound:
        return ModelNotFound(
            f"model {model!r} does not exist; GET /v1/models lists the base model, adapters and profiles",
            param="model",
        )

    def cards(self, scope: Scope) -> list[ModelCard]:
        """The models `scope` may use, as `/v1/models` lists them; an adapter's folder (`root`)
        only for a key that sees the server's paths."""
        cards = []
        if scope.allows_model(self.base_name):
            cards.append(ModelCard(id=self.base_name, kind="base", root=self.base_name))
        for entry in self._adapters.entries():
            if scope.allows_model(entry.name):
                root = str(entry.ref.path) if scope.sees_server else None
                cards.append(
                    ModelCard(
                        id=entry.name,
                        kind="adapter",
                        parent=self.base_name,
                        root=root,
                        created=int(entry.loaded_at),
                    )
                )
        for name, profile in sorted(self.profiles(scope).items()):
            cards.append(ModelCard(id=name, kind="profile", parent=profile.adapter or self.base_name))
        return cards

    def card(self, model: str, scope: Scope) -> ModelCard:
        """One model's card; a model outside `scope` is a 404, as if it did not exist."""
        found = next((card for card in self.cards(scope) if card.id == model), None)
        if found is None:
            raise self._not_found(model)
        return found

    def profiles(self, scope: Scope = UNLIMITED) -> dict[str, ProfileSettings]:
        """The profiles `scope` may use (all by default)."""
        return {n: p for n, p in self._profiles.items() if scope.allows_profile(n, p)}

    def get_profile(self, name: str, scope: Scope = UNLIMITED) -> ProfileSettings:
        """A profile outside `scope` is a 404 with the same message as one that does not exist."""
        profile = self._profiles.get(name)
        if profile is None or not scope.allows_profile(name, profile):
            raise ProfileNotFound(f"profile {name!r} does not exist", param="name")
        return profile

    def check_profile_name(self, name: str) -> None:
        if name == "auto":  # what `model: auto` asks for (serving.routing)
            raise RagtuneError(
                "'auto' is reserved: `model: auto` lets the server choose among the profiles; "
                "pick another profile name",
                param="name",
                code="name_taken",
            )
        if name == self.base_name or self._adapters.get(name) is not None:
            raise RagtuneError(
                f"{name!r} already names the base model or an adapter; pick another profile name",
                param="name",
                code="name_taken",
            )

    def set_profile(self, name: str, profile: ProfileSettings) -> None:
        """Create or replace a profile, unchecked (the checks are the caller's)."""
        self._profiles[name] = profile

    def remove_profile(self, name: str) -> None:
        self._profiles.pop(name, None)
