"""The grid's results file: one JSON line per tuning run, the key that makes a run resumable, and seed statistics."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hf_fst.heads import find_linear_head

__all__ = [
    "RECORD_KEY",
    "append_record",
    "device_name",
    "head_norm_squared",
    "read_records",
    "record_key",
    "summarize",
]


RECORD_KEY = (
    "dataset",
    "model",
    "attack",
    "poison_rate",
    "seed",
    "tuning_mode",
    "fst_alpha",
    "num_tuning_samples",
    "tuning_epochs",
    "tuning_learning_rate",
    "project_head_norm",
    "backdoor_epochs",
    "backdoor_learning_rate",
    "num_train_images",
    "backdoor_augment",
    "tuning_augment",
    "base_training",  # absent (None) in records of models trained from scratch
    "normalize_fst_alpha",  # absent (None) in records written before the option existed: the raw penalty
    "max_accuracy_drop",
    "fst_validation_folds",  # None: unset (automatic), also in records written before the option existed
    "retuning_poisoned_samples",  # None: no retuning attack in the record
)


def read_records(path: str | os.PathLike) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def record_key(record: dict[str, Any]) -> tuple:
    return tuple(json.dumps(record.get(k), sort_keys=True) for k in RECORD_KEY)


def append_record(path: str | os.PathLike, record: dict[str, Any]) -> None:
    """Append one line and fsync, so a crash loses at most the run in progress."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        handle.write(json.dumps(record, sort_keys=True) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def summarize(records: list[dict[str, Any]]) -> dict[tuple, dict[str, float]]:
    """Mean and sample standard deviation of the metrics per cell (all keys but the seed)."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for record in records:
        key = tuple(record.get(k) for k in RECORD_KEY if k != "seed")
        groups.setdefault(key, []).append(record)
    summary = {}
    for key, rows in groups.items():
        stats: dict[str, float] = {"seeds": len(rows)}
        for metric in ("clean_accuracy", "attack_success_rate", "robust_accuracy", "before_clean_accuracy",
                       "before_attack_success_rate"):  # fmt: skip
            values = np.array([r[metric] for r in rows], dtype=float)
            stats[metric] = float(values.mean())
            stats[f"{metric}_std"] = float(values.std(ddof=1)) if len(values) > 1 else math.nan
        summary[key] = stats
    return summary


def device_name() -> str:
    """What trained and evaluated a record: `cpu` or the GPU's name."""
    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


def head_norm_squared(model: nn.Module) -> float:
    """||W0||^2 of the backdoored model's head weight: the scale of the penalty alpha * <W, W0>."""
    return float(find_linear_head(model)[1].weight.detach().double().pow(2).sum())


def replace_section(path: str | os.PathLike, markers: tuple[str, str], text: str) -> bool:
    """Put `text` between the two marker lines of a document, keeping the hand-written rest; False when the
    document has no such markers (nothing is written then)."""
    path = Path(path)
    document = path.read_text()
    begin, end = markers
    if begin not in document or end not in document:
        return False
    before, rest = document.split(begin, 1)
    after = rest.split(end, 1)[1]
    path.write_text(f"{before}{begin}\n{text}\n{end}{after}")
    return True
