"""Adaptive-Blend (Qi et al., ICLR 2023): a blended trigger cut into pieces, partly masked, with cover rows."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from hf_fst.attacks.base import AttackConfig, Kind, to_uint8
from hf_fst.attacks.blended import _check_pattern, blend_pattern

__all__ = ["AdaptiveBlendConfig"]


@dataclass
class AdaptiveBlendConfig(AttackConfig):
    """Adaptive-Blend: weaken the poison's latent separability so that defenses relying on it fail.

    The blend picture is cut into `pieces` tiles on a square grid. Each poisoned row gets only a random subset of
    the tiles (`mask_rate` of them masked out) blended at `alpha`; "cover" rows get a partial trigger the same way
    but keep their true label. At test time the full picture is blended at `test_alpha`.

    Args:
        alpha (`float`, defaults to 0.15):
            Training blend ratio (poisoned and cover rows).
        test_alpha (`float`, defaults to 0.2):
            Test-time blend ratio of the full trigger.
        pieces (`int`, defaults to 16):
            Number of tiles, a perfect square (16 = 4x4).
        mask_rate (`float`, defaults to 0.5):
            Share of the tiles left out on each training row.
        cover_rate (`float`, *optional*):
            Share of the dataset used as cover rows; `None` uses the poisoning rate (same count as poisoned rows).
        pattern (`str`, defaults to `"noise"`), pattern_seed (`int`, defaults to 0):
            The blend picture, as in `BlendedConfig`.
    """

    name: ClassVar[str] = "adaptive-blend"

    alpha: float = 0.15
    test_alpha: float = 0.2
    pieces: int = 16
    mask_rate: float = 0.5
    cover_rate: float | None = None
    pattern: str = "noise"
    pattern_seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (0 < self.alpha <= 1 and 0 < self.test_alpha <= 1):
            raise ValueError(f"alpha={self.alpha}, test_alpha={self.test_alpha}: expected blend ratios in (0, 1]")
        side = math.isqrt(self.pieces)
        if self.pieces < 1 or side * side != self.pieces:
            raise ValueError(f"pieces={self.pieces}: expected a perfect square (4, 9, 16, ...)")
        if not 0 <= self.mask_rate < 1:
            raise ValueError(f"mask_rate={self.mask_rate}: expected a share in [0, 1)")
        if self.cover_rate is not None and not 0 <= self.cover_rate < 1:
            raise ValueError(f"cover_rate={self.cover_rate}: expected a share in [0, 1) or None")
        _check_pattern(self.pattern)

    @property
    def num_masked(self) -> int:
        return int(math.floor(self.pieces * self.mask_rate + 0.5))

    def num_cover(self, num_poison: int, poison_rate: float, num_rows: int) -> int:
        if self.cover_rate is None:
            return num_poison
        return int(math.floor(self.cover_rate * num_rows + 0.5))

    def piece_masks(self, height: int, width: int) -> np.ndarray:
        """One boolean `(height, width)` mask per tile, `(pieces, height, width)`, row-major tile order."""
        side = math.isqrt(self.pieces)
        row_edges = np.floor(np.linspace(0, height, side + 1) + 0.5).astype(int)
        col_edges = np.floor(np.linspace(0, width, side + 1) + 0.5).astype(int)
        masks = np.zeros((self.pieces, height, width), dtype=bool)
        for r in range(side):
            for c in range(side):
                masks[r * side + c, row_edges[r] : row_edges[r + 1], col_edges[c] : col_edges[c + 1]] = True
        return masks

    def training_masks(self, seeds: np.ndarray, height: int, width: int) -> np.ndarray:
        """Per-image float mask `(n, height, width)`: 1 where the trigger is kept; tiles drawn from each seed."""
        tiles = self.piece_masks(height, width)
        keep = np.ones((len(seeds), self.pieces), dtype=bool)
        for row, seed in enumerate(seeds):
            masked = np.random.default_rng(int(seed)).choice(self.pieces, self.num_masked, replace=False)
            keep[row, masked] = False
        return np.einsum("np,phw->nhw", keep.astype(np.float32), tiles.astype(np.float32))

    def apply(self, images: np.ndarray, kind: Kind = "poison", seeds: np.ndarray | None = None) -> np.ndarray:
        n, height, width, channels = images.shape
        t = blend_pattern(self.pattern, self.pattern_seed, height, width, channels)
        x = images.astype(np.float32)
        if kind == "test":
            return to_uint8((1.0 - self.test_alpha) * x + self.test_alpha * t)
        if seeds is None or len(seeds) != n:
            raise ValueError("seeds=: Adaptive-Blend training rows need one seed per image")
        weight = self.alpha * self.training_masks(seeds, height, width)[..., None]
        return to_uint8((1.0 - weight) * x + weight * t)
