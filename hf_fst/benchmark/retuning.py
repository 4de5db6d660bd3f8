"""The retuning attack on the grid's models: is the backdoor removed by tuning, or only hidden?

The attack (arXiv 2410.09838) fine-tunes every parameter of a model on the cell's clean tuning images with the
first few replaced by poisoned training images of the cell's attack, for 5 epochs at lr 0.01 (constant), batch 128.
The grid runs it on every tuned model and once on the backdoored model itself; the ASR afterwards is the P-ASR.
"""

from __future__ import annotations

import tempfile
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from hf_fst.attacks import AttackConfig
from hf_fst.benchmark.sources import DATASETS
from hf_fst.benchmark.tensors import decode_images
from hf_fst.robustness import RETUNING_SETTINGS, poisoned_sample

if TYPE_CHECKING:
    from hf_fst.benchmark.grid import GridRunner

__all__ = ["retuning_tensors", "retune"]


def retuning_tensors(
    runner: GridRunner, dataset_name: str, attack: AttackConfig, seed: int, count: int, num_poisoned: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The cell's tuning images and labels with the first `num_poisoned` replaced by poisoned training images."""
    data = runner.load(dataset_name)
    index = runner.tuning_index(dataset_name, seed, count)
    images, labels = data["train_images"][index].clone(), data["train_labels"][index].clone()
    if not 0 < num_poisoned <= len(index):
        raise ValueError(f"retuning_poisoned_samples={num_poisoned} must be in [1, {len(index)}] (the tuning set)")
    poisoned = poisoned_sample(data["train"], attack, num_poisoned, seed)
    flagged = np.flatnonzero(np.asarray(poisoned["is_poisoned"], dtype=bool))[:num_poisoned]
    rows = poisoned.select(flagged.tolist())
    images[:num_poisoned] = decode_images(
        rows, data["image_column"], size=data["image_size"], desc="Decoding retuning"
    )
    labels[:num_poisoned] = torch.tensor(rows[data["label_column"]])
    return images, labels


def retune(runner: GridRunner, model: Any, dataset_name: str, images: torch.Tensor, labels: torch.Tensor, seed: int):
    """A copy of `model` after the retuning attack (augmented as the grid's tuning runs are)."""
    settings = dict(RETUNING_SETTINGS)
    epochs, learning_rate = settings.pop("num_train_epochs"), settings.pop("learning_rate")
    return runner.train_model(
        model, images, labels, epochs, learning_rate, seed, tempfile.mkdtemp(prefix="retuning-"),
        runner.config.tuning_augment, DATASETS[dataset_name]["flip"], **settings,
    ).model  # fmt: skip
