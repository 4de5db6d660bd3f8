"""What the attacks whose triggers come from a clean model share: normalising inputs, and trigger files.

LC perturbs images against a clean model; LF and TrojanNN fit a trigger on one and keep it as a `.npy` array.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from PIL import Image

from hf_fst.forward import model_device

__all__ = ["load_trigger", "model_inputs", "resize_trigger"]


def model_inputs(
    model: torch.nn.Module, channels: int, pixel_mean: list[float] | None, pixel_std: list[float] | None
) -> tuple[torch.device, torch.Tensor, torch.Tensor]:
    """The model's device and the `(1, c, 1, 1)` mean and std that map [0, 1] pixels to its inputs."""
    device = model_device(model)
    mean = torch.tensor(pixel_mean or [0.0] * channels, device=device).view(1, -1, 1, 1)
    std = torch.tensor(pixel_std or [1.0] * channels, device=device).view(1, -1, 1, 1)
    return device, mean, std


@functools.lru_cache(maxsize=16)
def load_trigger(path: str, low: float = -np.inf, high: float = np.inf) -> np.ndarray:
    """A read-only float32 trigger `(height, width, channels)` from a `.npy` file, never unpickled."""
    array = np.load(path, allow_pickle=False)
    if array.ndim != 3 or not np.isfinite(array).all() or array.min() < low or array.max() > high:
        bounds = f" in [{low:g}, {high:g}]" if np.isfinite([low, high]).all() else ""
        raise ValueError(f"expected a finite float array (height, width, channels){bounds}")
    array = array.astype(np.float32)
    array.setflags(write=False)
    return array


def resize_trigger(trigger: np.ndarray, height: int, width: int, channels: int, resample: str) -> np.ndarray:
    """`trigger` at `height` x `width` (each channel resized by PIL with `resample`) and `channels` channels."""
    if trigger.shape[:2] != (height, width):
        method = Image.Resampling[resample.upper()]
        trigger = np.stack(
            [
                np.asarray(Image.fromarray(trigger[..., c]).resize((width, height), method))
                for c in range(trigger.shape[-1])
            ],
            axis=-1,
        )
    if trigger.shape[-1] != channels:
        trigger = np.repeat(trigger.mean(-1, keepdims=True), channels, axis=-1)
    return trigger
