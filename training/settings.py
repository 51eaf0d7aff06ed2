"""Settings of LoRA training (a section of the root settings, `RAGTUNE_TRAINING__*`)."""

from pydantic import BaseModel, ConfigDict, Field


class TrainingSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    epochs: float = Field(3.0, gt=0)
    lr: float = Field(2e-4, gt=0)
    rank: int = Field(16, description="LoRA rank; vLLM accepts 1, 8, 16, 32, 64, 128, 256, 320, 512")
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] = Field(
        default_factory=lambda: [
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ]
    )
    max_seq_len: int = Field(1024, ge=32)
    batch_size: int = Field(8, ge=1)
    grad_accum: int = Field(1, ge=1)
    eval_split: float = Field(0.1, ge=0, lt=1)
    seed: int = 0
