"""ragtune's grouped LoRA ops give vLLM's CPU ops' numbers, without per-token weight copies.

The live server's test (test_serving_live.py, mixed batch) checks the same through the engine
against PEFT; these check each op directly, including tokens that carry no adapter (-1).
"""

from __future__ import annotations

import pytest
import torch

from ragtune.serving import lora_cpu

vllm_ops = pytest.importorskip("vllm.lora.ops.torch_ops.lora_ops")
ORIGINAL = {name: getattr(vllm_ops, name) for name in lora_cpu.REPLACED}

TOKENS, HIDDEN, OUT, RANK, SLOTS = 37, 24, 40, 8, 4


@pytest.fixture(params=["one adapter", "mixed", "mixed with no-adapter tokens", "no adapter at all"])
def indices(request: pytest.FixtureRequest) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    if request.param == "one adapter":
        return torch.full((TOKENS,), 2, dtype=torch.long)
    if request.param == "no adapter at all":  # a decode batch of base-model requests
        return torch.full((TOKENS,), -1, dtype=torch.long)
    low = 0 if request.param == "mixed" else -1
    return torch.randint(low, SLOTS, (TOKENS,), generator=g)


def _compare(name: str, indices: torch.Tensor, inputs: torch.Tensor, weights: torch.Tensor, *args) -> None:
    start = torch.randn(TOKENS, weights.shape[2] if weights.dim() == 4 else weights.shape[1])
    ours, theirs = start.clone(), start.clone()
    getattr(lora_cpu, name)(inputs, weights, ours, indices, *args)
    ORIGINAL[name](inputs, weights, theirs, indices, *args)
    rows = indices >= 0
    assert torch.allclose(ours[rows], theirs[rows], atol=1e-5)
    add = bool(args[-1]) if name != "bgmv_shrink" else False
    if (~rows).any():  # no adapter: no LoRA term (vLLM's gather took the last slot's weights)
        expected = start[~rows] if add else torch.zeros_like(start[~rows])
        assert torch.equal(ours[~rows], expected)


def test_shrink(indices: torch.Tensor) -> None:
    a = torch.randn(SLOTS, 1, RANK, HIDDEN)
    _compare("bgmv_shrink", indices, torch.randn(TOKENS, HIDDEN), a, 0.5)


@pytest.mark.parametrize("add", [True, False])
def test_expand(indices: torch.Tensor, add: bool) -> None:
    b = torch.randn(SLOTS, 1, OUT, RANK)
    _compare("bgmv_expand", indices, torch.randn(TOKENS, RANK), b, add)


@pytest.mark.parametrize("add", [True, False])
def test_expand_slice(indices: torch.Tensor, add: bool) -> None:
    b = torch.randn(SLOTS, 1, OUT, RANK)
    inputs = torch.randn(TOKENS, RANK)
    start = torch.randn(TOKENS, OUT + 10)
    ours, theirs = start.clone(), start.clone()
    lora_cpu.bgmv_expand_slice(inputs, b, ours, indices, 3, OUT, add)
    ORIGINAL["bgmv_expand_slice"](inputs, b, theirs, indices, 3, OUT, add)
    rows = indices >= 0
    assert torch.allclose(ours[rows], theirs[rows], atol=1e-5)
    untouched = start[~rows].clone()
    if not add:
        untouched[:, 3 : 3 + OUT] = 0
    assert torch.equal(ours[~rows], untouched)


def test_register_patches_only_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    punica_cpu = pytest.importorskip("vllm.lora.punica_wrapper.punica_cpu")
    for module in (vllm_ops, punica_cpu):
        for name, fn in ORIGINAL.items():
            monkeypatch.setattr(module, name, fn)  # restored after the test
    monkeypatch.delenv(lora_cpu.ENV, raising=False)
    lora_cpu.register()
    assert punica_cpu.bgmv_shrink is ORIGINAL["bgmv_shrink"]
    monkeypatch.setenv(lora_cpu.ENV, "1")
    lora_cpu.register()
    for name, fn in lora_cpu.REPLACED.items():
        assert getattr(punica_cpu, name) is fn and getattr(vllm_ops, name) is fn
