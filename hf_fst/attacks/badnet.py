"""BadNet (Gu et al., 2017): a small white square in a corner, dirty label."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from hf_fst.attacks.base import AttackConfig, Kind, scale_to

__all__ = ["BadNetConfig", "CORNERS"]

CORNERS = ("bottom-right", "bottom-left", "top-right", "top-left")


@dataclass
class BadNetConfig(AttackConfig):
    """BadNet: a solid square patch pasted in a corner; poisoned rows are relabelled to the target.

    Args:
        patch_size (`int`, defaults to 3):
            Side of the square at 32x32; scaled with the image (height and width separately), at least 1 pixel.
        location (`str`, defaults to `"bottom-right"`):
            Corner the patch sits in, flush with the image border.
        value (`int`, defaults to 255):
            Pixel value of the patch in every channel (255 = white).
    """

    name: ClassVar[str] = "badnet"

    patch_size: int = 3
    location: str = "bottom-right"
    value: int = 255

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.patch_size < 1:
            raise ValueError(f"patch_size={self.patch_size}: expected a positive int")
        if self.location not in CORNERS:
            raise ValueError(f"location={self.location!r}: expected one of {list(CORNERS)}")
        if not 0 <= self.value <= 255:
            raise ValueError(f"value={self.value}: expected a pixel value in [0, 255]")

    def patch_slices(self, height: int, width: int) -> tuple[slice, slice]:
        """Rows and columns the patch covers in a `height` x `width` image."""
        ph, pw = min(height, scale_to(self.patch_size, height)), min(width, scale_to(self.patch_size, width))
        rows = slice(height - ph, height) if self.location.startswith("bottom") else slice(0, ph)
        cols = slice(width - pw, width) if self.location.endswith("right") else slice(0, pw)
        return rows, cols

    def apply(self, images: np.ndarray, kind: Kind = "poison", seeds: np.ndarray | None = None) -> np.ndarray:
        out = images.copy()
        rows, cols = self.patch_slices(images.shape[1], images.shape[2])
        out[:, rows, cols, :] = self.value
        return out
