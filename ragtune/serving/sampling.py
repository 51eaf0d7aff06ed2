"""A request's sampling fields as the engine's SamplingOptions: temperature, penalties,
logit_bias (checked against the vocabulary), logprobs, and the constraints of grounding and of
structured output (serving.structured) as one set of fields."""

from __future__ import annotations

from typing import Any

from ragtune.core.errors import RagtuneError
from ragtune.serving.engine import SamplingOptions
from ragtune.serving.protocol import ChatCompletionRequest, CompletionRequest
from ragtune.serving.structured import Plan


def sampling_options(
    req: ChatCompletionRequest | CompletionRequest,
    *,
    max_tokens: int,
    vocab_size: int,
    shape: Plan,
    constraint: dict[str, Any],
) -> SamplingOptions:
    """`constraint`: grounding's fields (serving.grounding), which a shape never meets (the
    service refuses the two together)."""
    return SamplingOptions(
        max_tokens=max_tokens,
        temperature=1.0 if req.temperature is None else req.temperature,
        top_p=1.0 if req.top_p is None else req.top_p,
        stop=req.stop_list,
        seed=req.seed,
        n=req.n,
        ignore_eos=req.ignore_eos,
        min_tokens=req.min_tokens,
        presence_penalty=req.presence_penalty or 0.0,
        frequency_penalty=req.frequency_penalty or 0.0,
        logit_bias=_logit_bias(req.logit_bias, vocab_size),
        logprobs=_logprobs_asked(req),
        **constraint,
        **_shaped(shape),
    )


def _logit_bias(bias: dict[str, float] | None, vocab_size: int) -> tuple[tuple[int, float], ...] | None:
    """`logit_bias` with token ids checked against the vocabulary (a 400 naming the id)."""
    if not bias:
        return None
    for token in bias:
        if int(token) >= vocab_size:
            raise RagtuneError(
                f"logit_bias names token {token}; this model's vocabulary has {vocab_size} tokens",
                param="logit_bias",
            )
    return tuple((int(t), b) for t, b in bias.items())


def _shaped(shape: Plan) -> dict[str, Any]:
    """A plan's SamplingOptions fields: its schema, and special tokens kept for a tool parser."""
    fields: dict[str, Any] = {}
    if shape.schema is not None:
        fields["json_schema"] = shape.schema
    if shape.json_object:
        fields["json_object"] = True
    if shape.tools == "auto":  # tool-call markers are special tokens in some vocabularies
        fields["skip_special_tokens"] = False
    return fields


def _logprobs_asked(req: ChatCompletionRequest | CompletionRequest) -> int | None:
    """How many alternatives per token the request wants (None: no logprobs)."""
    if isinstance(req, ChatCompletionRequest):
        return (req.top_logprobs or 0) if req.logprobs else None
    return req.logprobs
