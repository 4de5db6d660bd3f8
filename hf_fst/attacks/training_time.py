"""Triggers applied while training: the collator that puts a training-time attack's trigger on each batch.

WaNet's paper and BackdoorBench warp the poisoned and cross samples of every batch after the loader's
augmentation, drawing new cross noise each time (and then augment the batch once more, which hf-fst leaves out).
A warp stored once in the data set has fixed cross samples and is moved around by the loader's crop and flip.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from hf_fst.attacks.base import AttackConfig

__all__ = ["TriggerCollator"]


def _stack(rows: list[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
    return {
        "pixel_values": torch.stack([torch.as_tensor(row["pixel_values"]) for row in rows]),
        "labels": torch.as_tensor([int(row["labels"]) for row in rows], dtype=torch.long),
    }


class TriggerCollator:
    """Collate a batch, then apply `attack.apply_during_training` to the rows whose `trigger_kind` is not 0.

    Args:
        attack: a training-time attack (`attack.is_training_time`), the one `poison_dataset` chose the rows for.
        collate: the collator to wrap; the default stacks `pixel_values` and `labels` only. The rows must carry
            `trigger_kind` (the column `poison_dataset` adds; `build_transform` passes it through).
    """

    def __init__(self, attack: AttackConfig, collate: Callable[[list], dict[str, Any]] | None = None) -> None:
        if not attack.is_training_time:
            raise ValueError(
                f"attack={attack.name!r} stores its triggers in the data set; use the plain collator, not "
                "TriggerCollator"
            )
        self.attack, self.collate = attack, collate or _stack

    def __call__(self, rows: list[Mapping[str, Any]]) -> dict[str, Any]:
        if rows and "trigger_kind" not in rows[0]:
            raise ValueError(
                "rows have no trigger_kind: poison the training set with poison_dataset(..., attack) for this "
                "attack, and keep the column through the transform"
            )
        kinds = torch.as_tensor([int(row["trigger_kind"]) for row in rows], dtype=torch.long)
        batch = self.collate(rows)
        if bool((kinds > 0).any()):
            batch["pixel_values"] = self.attack.apply_during_training(batch["pixel_values"], kinds)
        return batch
