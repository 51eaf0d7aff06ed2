"""Assistant-only loss that projects to the vocabulary only where a label exists.

With loss on assistant tokens only, most positions of a chat (system, user turn, retrieved
context) carry no label, yet a plain causal-LM forward computes full-vocabulary logits for all
of them (49k x hidden per token for SmolLM2: about a fifth of the forward FLOPs, and the largest
activation). The collator passes `logits_to_keep` (transformers' own forward argument) with the
positions whose next token is labelled, and `assistant_loss` scores just those. The loss is the
same number the model's built-in loss gives: summed token cross-entropy over the labelled tokens,
divided by the Trainer's `num_items_in_batch` (or their count).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ragtune.training.data import IGNORE_INDEX, pad_batch


def label_positions(labels: Any) -> Any:
    """Positions p whose next token (p + 1) is labelled in any row, as a 1-D index tensor."""
    import torch

    mask = (labels[:, 1:] != IGNORE_INDEX).any(dim=0)
    return torch.nonzero(mask, as_tuple=False).flatten()


def collate(rows: Sequence[dict[str, list[int]]], pad_id: int) -> dict[str, Any]:
    batch = pad_batch(rows, pad_id)
    batch["logits_to_keep"] = label_positions(batch["labels"])
    return batch


def assistant_loss(outputs: Any, labels: Any, num_items_in_batch: Any = None) -> Any:
    import torch.nn.functional as F

    keep = label_positions(labels).to(labels.device)
    target = labels[:, keep + 1]
    logits = outputs["logits"] if isinstance(outputs, dict) else outputs.logits
    total = F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]),
        target.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )
    count = num_items_in_batch if num_items_in_batch is not None else (target != IGNORE_INDEX).sum()
    return total / count
