"""Triggers the grid optimises on a clean model before poisoning: LF's smooth perturbation, TrojanNN's patch.

Each is made once per data set, model and seed from the grid's clean model (the one LC uses), kept as a `.npy`
next to the cached models and passed to the attack as its `pattern`, so the records and the cache say which
trigger a backdoored model was trained with.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hf_fst.attacks.lf import find_low_frequency_trigger
from hf_fst.attacks.trojannn import find_trojan_trigger, square_mask
from hf_fst.benchmark.tensors import PIXEL_MEAN, PIXEL_STD

__all__ = ["OPTIMISED_TRIGGERS", "optimised_trigger"]

OPTIMISED_TRIGGERS = ("lf", "trojannn")
LF_IMAGES = 100  # clean training images the LF perturbation is fitted on (the paper's number)


def optimised_trigger(runner: Any, dataset_name: str, attack_name: str, seed: int) -> str:
    """Path of the cell's optimised trigger, made on the clean model of `seed` the first time it is asked for."""
    data = runner.load(dataset_name)
    model = runner.clean_model(dataset_name, seed)
    name = f"{dataset_name}-{runner.config.model}-{attack_name}-trigger-s{seed}-{runner._training_tag(data)}.npy"
    path = Path(runner.config.cache_dir) / name
    if path.is_file():
        return str(path)
    normalisation = {"pixel_mean": [PIXEL_MEAN] * 3, "pixel_std": [PIXEL_STD] * 3}
    if attack_name == "lf":
        rows = torch.randperm(len(data["train_images"]), generator=torch.Generator().manual_seed(seed))[:LF_IMAGES]
        images = data["train_images"][rows].permute(0, 2, 3, 1).numpy()
        trigger = find_low_frequency_trigger(model, images, target_label=0, seed=seed, **normalisation)
    elif attack_name == "trojannn":
        size = data["image_size"]
        trigger = find_trojan_trigger(model, square_mask(size, size), **normalisation)
    else:
        raise ValueError(f"attack_name={attack_name!r}: only {list(OPTIMISED_TRIGGERS)} have optimised triggers")
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, staging = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=".npy")
    with os.fdopen(handle, "wb") as file:
        np.save(file, trigger.astype(np.float32), allow_pickle=False)
    os.replace(staging, path)
    return str(path)
