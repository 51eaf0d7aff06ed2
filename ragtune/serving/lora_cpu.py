"""Grouped LoRA matmuls for vLLM on CPU: a vLLM plugin (entry point `vllm.general_plugins`).

vLLM's CPU LoRA path (`vllm.lora.ops.torch_ops`) gathers one copy of the adapter's A or B matrix
per token (`weights[indices]`) and multiplies them with an einsum. For a prefill of N tokens
that materialises N x rank x hidden floats per projection: 16 prompts of 700 tokens through a
rank-16 adapter copy about 0.7 GB for every gate/up projection of every layer. Prompts with
retrieved context are long, so adapter requests were many times slower than the base model.

These replacements compute the same products with one matmul per adapter present in the
batch (usually one or two) and no per-token copies. Tokens whose index is -1 (no adapter)
get no LoRA term, as in vLLM's GPU kernels (the gather picked the last slot for them); a decode
batch with no adapter at all (vLLM skips only prefill then) costs nothing: no zeros are made and
added for every projection of every layer.

vLLM loads general plugins in every process it starts, including its engine core, which is
where the model runs. The patch is applied only where ragtune asked for it: `VllmEngine` sets
RAGTUNE_CPU_LORA_OPS=1 before the engine starts (from the setting `engine.cpu_lora_ops`, on by
default; its child processes inherit the variable), so a plain vLLM server in the same
environment stays as vLLM ships it unless that variable is set for it.
"""

from __future__ import annotations

import logging
import os
from typing import Any

ENV = "RAGTUNE_CPU_LORA_OPS"


def _lora_product(inputs: Any, weights: Any, indices: Any, dtype: Any) -> Any:
    """Row t of the result is inputs[t] @ weights[indices[t]].T (zeros where indices[t] < 0)."""
    import torch

    if weights.dim() == 4:
        weights = weights.squeeze(1)
    x = inputs.to(dtype=dtype)
    first = int(indices[0])
    if first >= 0 and bool((indices == first).all()):  # the usual batch: one adapter for every token
        return x @ weights[first].to(dtype=dtype).t()
    out = x.new_zeros((x.shape[0], weights.shape[1]))
    for slot in torch.unique(indices).tolist():
        if slot < 0:
            continue
        rows = (indices == slot).nonzero().squeeze(1)
        out[rows] = x[rows] @ weights[slot].to(dtype=dtype).t()
    return out


def _none(indices: Any) -> bool:
    """No token of the batch has an adapter."""
    return bool((indices < 0).all())


def bgmv_shrink(
    inputs: Any, lora_a_weights: Any, output_tensor: Any, lora_indices_tensor: Any, scaling: float = 1.0
) -> None:
    if _none(lora_indices_tensor):
        output_tensor[:, : lora_a_weights.shape[-2]] = 0
        return
    outputs = _lora_product(inputs, lora_a_weights, lora_indices_tensor, output_tensor.dtype)
    output_tensor[:, : outputs.shape[1]] = scaling * outputs


def bgmv_expand(
    inputs: Any, lora_b_weights: Any, output_tensor: Any, lora_indices_tensor: Any, add_inputs: bool = True
) -> None:
    if _none(lora_indices_tensor):
        if not add_inputs:
            output_tensor[:, : lora_b_weights.shape[-2]] = 0
        return
    outputs = _lora_product(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    limit = output_tensor.shape[0]
    if outputs.shape[0] == 1 and output_tensor.shape[0] != 1:
        limit = 1
    # The adapter and the model may pad the output dimension differently.
    common = min(outputs.shape[1], output_tensor.shape[1])
    if add_inputs:
        output_tensor[:, :common] += outputs[:limit, :common]
    else:
        output_tensor[:, :common] = outputs[:limit, :common]


def bgmv_expand_slice(
    inputs: Any,
    lora_b_weights: Any,
    output_tensor: Any,
    lora_indices_tensor: Any,
    slice_offset: int,
    slice_size: int,
    add_inputs: bool = True,
) -> None:
    if _none(lora_indices_tensor):
        if not add_inputs:
            output_tensor[:, slice_offset : slice_offset + slice_size] = 0
        return
    outputs = _lora_product(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    if add_inputs:
        output_tensor[:, slice_offset : slice_offset + slice_size] += outputs
    else:
        output_tensor[:, slice_offset : slice_offset + slice_size] = outputs


REPLACED = {"bgmv_shrink": bgmv_shrink, "bgmv_expand": bgmv_expand, "bgmv_expand_slice": bgmv_expand_slice}


def register() -> None:
    """vLLM's plugin hook: swap the CPU LoRA ops where RAGTUNE_CPU_LORA_OPS=1 (idempotent)."""
    if os.environ.get(ENV) != "1":
        return
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return
    from vllm.lora.ops import torch_ops
    from vllm.lora.ops.torch_ops import lora_ops

    # vLLM's sgmv_* functions call these names from lora_ops' globals; the CPU punica wrapper
    # imported them by name, so each module that holds them gets the replacement.
    targets: list[Any] = [lora_ops, torch_ops]
    try:
        from vllm.lora.punica_wrapper import punica_cpu

        targets.append(punica_cpu)
    except ImportError:  # a vLLM without the CPU wrapper has nothing to patch there
        pass
    for module in targets:
        for name, fn in REPLACED.items():
            if hasattr(module, name):
                setattr(module, name, fn)
    # Under vLLM's logger, so it shows in the engine's log once per process.
    logging.getLogger("vllm.ragtune").info("ragtune: grouped LoRA ops on CPU (%s=1)", ENV)
