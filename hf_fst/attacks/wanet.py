"""WaNet (Nguyen & Tran, 2021): an imperceptible smooth warp of the image, dirty label, with noise mode."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from hf_fst.attacks.base import AttackConfig, Kind, to_uint8

__all__ = ["WaNetConfig", "warp_grid"]


@functools.lru_cache(maxsize=32)
def _warp_grid(k: int, s: float, grid_rescale: float, grid_seed: int, height: int, width: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(grid_seed)
    control = torch.rand(1, 2, k, k, generator=generator) * 2 - 1
    control = control / control.abs().mean()
    noise = F.interpolate(control, size=(height, width), mode="bicubic", align_corners=True).permute(0, 2, 3, 1)
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, height), torch.linspace(-1, 1, width), indexing="ij")
    identity = torch.stack((xs, ys), dim=-1)[None]
    # The warp field is s / side in normalised coordinates per unit of control noise (the paper divides by the
    # height of its square images; height and width are treated separately here so non-square images work).
    scale = torch.tensor([s / width, s / height])
    grid = (identity + scale * noise) * grid_rescale
    return torch.clamp(grid, -1, 1)


def warp_grid(k: int, s: float, grid_rescale: float, grid_seed: int, height: int, width: int) -> torch.Tensor:
    """The fixed backdoor sampling grid `(1, height, width, 2)` in `grid_sample` coordinates, clamped to [-1, 1]."""
    return _warp_grid(k, float(s), float(grid_rescale), grid_seed, height, width).clone()


@dataclass
class WaNetConfig(AttackConfig):
    """WaNet: resample the image through a fixed random smooth warp; poisoned rows are relabelled.

    The warp is a `k` x `k` field of U[-1, 1] control points, divided by its mean absolute value, bicubically
    upsampled to the image size and added to the identity grid with strength `s / size` (normalised
    coordinates), then clamped to [-1, 1]. In noise mode, `cross_ratio` times as many extra "cross" rows are
    warped with that grid plus per-image U[-1, 1] / size noise and keep their true labels, which teaches the
    network that only this exact warp is the trigger.

    Args:
        k (`int`, defaults to 4):
            Side of the control-point grid.
        s (`float`, defaults to 0.5):
            Warp strength.
        grid_rescale (`float`, defaults to 1):
            Factor applied to the whole grid before clamping.
        noise_mode (`bool`, defaults to `True`):
            Add the cross rows.
        cross_ratio (`float`, defaults to 2):
            Cross rows per poisoned row in noise mode.
        grid_seed (`int`, defaults to 0):
            Seed of the control points (part of the trigger).
        training_time (`bool`, defaults to `True`):
            Warp during training, as the paper and BackdoorBench do: the poisoned rows of every batch are warped
            after the loader's augmentation and the cross rows get fresh noise, so every epoch sees new cross
            samples (both then augment the batch a second time, with rotation; hf-fst does not). `False` stores
            warped rows once (`poison_dataset` alone then makes the training set): fixed cross samples, and a warp
            that the loader's crop and flip move around.
    """

    name: ClassVar[str] = "wanet"

    k: int = 4
    s: float = 0.5
    grid_rescale: float = 1.0
    noise_mode: bool = True
    cross_ratio: float = 2.0
    grid_seed: int = 0
    training_time: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.k < 2:
            raise ValueError(f"k={self.k}: expected a control grid side of at least 2")
        if self.s < 0 or self.grid_rescale <= 0:
            raise ValueError(f"s={self.s}, grid_rescale={self.grid_rescale}: expected s >= 0 and grid_rescale > 0")
        if self.cross_ratio < 0:
            raise ValueError(f"cross_ratio={self.cross_ratio}: expected a non-negative ratio")

    def num_cover(self, num_poison: int, poison_rate: float, num_rows: int) -> int:
        return int(math.floor(self.cross_ratio * num_poison + 0.5)) if self.noise_mode else 0

    def grid(self, height: int, width: int) -> torch.Tensor:
        return _warp_grid(self.k, float(self.s), float(self.grid_rescale), self.grid_seed, height, width)

    @property
    def is_training_time(self) -> bool:
        return bool(self.training_time)

    def apply_during_training(self, pixels: torch.Tensor, kinds: torch.Tensor) -> torch.Tensor:
        """Warp the poisoned rows (kind 1) with the fixed grid and the cross rows (kind 2) with grid + fresh noise.

        The noise comes from torch's global generator, which the Trainer seeds: a run is reproducible, each batch
        and epoch draws new cross samples, and dataloader workers (seeded apart) draw different ones.
        """
        kinds = torch.as_tensor(kinds, device=pixels.device)
        rows = torch.nonzero(kinds > 0).flatten()
        if len(rows) == 0:
            return pixels
        _, _, height, width = pixels.shape
        grid = self.grid(height, width).to(pixels.device).expand(len(rows), -1, -1, -1)
        cross = (kinds[rows] == 2)[:, None, None, None]
        noise = (torch.rand(len(rows), height, width, 2) * 2 - 1).to(pixels.device)
        noise = noise / torch.tensor([width, height], dtype=noise.dtype, device=pixels.device)
        grid = torch.where(cross, torch.clamp(grid + noise, -1, 1), grid)
        out = pixels.clone()
        source = pixels[rows].float()
        out[rows] = F.grid_sample(source, grid.to(source.dtype), mode="bilinear", align_corners=True).to(out.dtype)
        return out

    def apply(self, images: np.ndarray, kind: Kind = "poison", seeds: np.ndarray | None = None) -> np.ndarray:
        n, height, width, _ = images.shape
        grid = self.grid(height, width).expand(n, -1, -1, -1)
        if kind == "cover":
            if seeds is None or len(seeds) != n:
                raise ValueError("seeds=: WaNet cross rows need one seed per image")
            noise = np.stack(
                [np.random.default_rng(int(seed)).uniform(-1, 1, size=(height, width, 2)) for seed in seeds]
            )
            noise = torch.from_numpy(noise.astype(np.float32)) / torch.tensor([width, height], dtype=torch.float32)
            grid = torch.clamp(grid + noise, -1, 1)
        x = torch.as_tensor(np.array(images, dtype=np.float32)).permute(0, 3, 1, 2)
        warped = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        return to_uint8(warped.permute(0, 2, 3, 1).numpy())
