"""Settings of LoRA training (a section of the root settings, `RAGTUNE_TRAINING__*`)."""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class TrainingSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    epochs: float | Literal["auto"] = Field(
        "auto",
        description="passes over the data; 'auto' picks them from the data size (training.train.auto_epochs)",
    )
    max_steps: int = Field(-1, description="stop after this many optimizer steps (-1: run all epochs)")
    lr: float = Field(
        1e-3,
        gt=0,
        description="peak learning rate (cosine decay); 1e-3 suits LoRA (alpha = 2 x rank) on small models",
    )
    rank: int = Field(16, description="LoRA rank; vLLM accepts 1, 8, 16, 32, 64, 128, 256, 320, 512")
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        description="the linear layers that get LoRA (names as in the model)",
    )
    layers: int | None = Field(
        None,
        ge=1,
        description="LoRA on the last N decoder layers only (None: all). The backward pass stops at "
        "the lowest adapted layer, so half the layers train about 1.4x faster on a CPU",
    )
    max_seq_len: int = Field(1024, ge=32)
    too_long: Literal["truncate", "skip"] = Field(
        "truncate", description="what to do with examples longer than max_seq_len (both are counted)"
    )
    batch_size: int = Field(8, ge=1)
    grad_accum: int = Field(1, ge=1)
    eval_split: float = Field(0.1, ge=0, lt=1)
    seed: int = Field(0, description="for the data split, LoRA init and shuffling")
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "auto",
        description="'auto': bf16 on CUDA or on CPUs with AVX512-BF16/AMX, else fp32 (fp16 on old GPUs)",
    )
    threads: int = Field(
        0,
        ge=0,
        description="torch threads while training (0: torch's default, one per core); 1 is faster on a "
        "CPU shared with other busy processes, where OpenMP threads wait on descheduled partners",
    )
    strict: bool = Field(
        False, description="fail (non-zero exit, no adapter written) when the eval loss did not clearly fall"
    )
    samples: int = Field(3, ge=0, le=20, description="held-out generations printed after training")
    group_by_length: bool = Field(True, description="batch examples of similar length (less padding)")
    logging_steps: int = Field(5, ge=1)
    save_steps: int = Field(50, ge=1, description="checkpoint every N steps (for --resume)")
    eval_steps: int = Field(50, ge=1)
    context_p: float = Field(
        0.8, ge=0, le=1, description="--collection: probability the relevant chunk is in the context (RAFT)"
    )
    context_distractors: int = Field(
        3, ge=0, le=20, description="--collection: distractor chunks per example"
    )

    @field_validator("epochs")
    @classmethod
    def _positive_epochs(cls, v: float | str) -> float | str:
        if v != "auto" and float(v) <= 0:
            raise ValueError("must be 'auto' or a number above 0")
        return v
