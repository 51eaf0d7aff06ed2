"""`ragtune adapters validate` loads a ragtune-trained adapter in the real vLLM engine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ragtune.training.settings import TrainingSettings
from ragtune.training.train import train

FIXTURES = Path(__file__).parent / "fixtures" / "training"


@pytest.mark.engine
@pytest.mark.timeout(600)
def test_vllm_loads_a_trained_adapter(base_model: Path, tmp_path: Path):
    settings = TrainingSettings(
        rank=8, alpha=16, lr=5e-3, max_steps=4, batch_size=4, max_seq_len=96, eval_split=0, threads=1
    )
    adapter = train(
        FIXTURES / "tiny.jsonl",
        "zebra",
        base_model=base_model,
        adapters_dir=tmp_path,
        settings=settings,
        progress=False,
    )
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1")
    cmd = [
        sys.executable,
        "-m",
        "ragtune.training.validate",
        "--adapter",
        str(adapter),
        "--base",
        str(base_model),
        "--max-lora-rank",
        "8",
        "--prompt",
        "What colour is the lamp number 3?",
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=500)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # vLLM logs to stdout too; the report is the line validate prints last that starts with {"base"
    report = json.loads([line for line in proc.stdout.splitlines() if line.startswith('{"base"')][-1])
    assert report["base"] and report["adapter"]
    assert report["differs"], report  # four steps at a high rate already change the greedy answer
