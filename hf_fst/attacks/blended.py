"""Blended (Chen et al., 2017): a fixed picture alpha-blended over the whole image, dirty label."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from PIL import Image

from hf_fst.attacks.base import REFERENCE_SIZE, AttackConfig, Kind, to_uint8

__all__ = ["BlendedConfig", "blend_pattern"]


@functools.lru_cache(maxsize=64)
def blend_pattern(pattern: str, pattern_seed: int, height: int, width: int, channels: int) -> np.ndarray:
    """The blend picture as float32 `(height, width, channels)` in [0, 255].

    `pattern="noise"` is a seeded uniform-noise picture drawn at 32x32 and resized with nearest neighbour, so it is
    the same picture at every image size (the random-noise key of the Blended paper). Any other value is read as
    the path of an image file (for example the Hello Kitty picture BackdoorBench uses, if its licence suits you).
    """
    if pattern == "noise":
        rng = np.random.default_rng(pattern_seed)
        picture = Image.fromarray(rng.integers(0, 256, size=(REFERENCE_SIZE, REFERENCE_SIZE, 3), dtype=np.uint8))
        picture = picture.resize((width, height), Image.Resampling.NEAREST)
    else:
        with Image.open(pattern) as source:
            picture = source.convert("RGB").resize((width, height), Image.Resampling.BILINEAR)
    if channels == 1:
        picture = picture.convert("L")
    array = np.asarray(picture, dtype=np.float32)
    array = array.reshape(height, width, -1)
    array.setflags(write=False)
    return array


def _check_pattern(pattern: str) -> None:
    if pattern == "noise":
        return
    try:
        with Image.open(pattern) as image:
            image.verify()
    except (OSError, ValueError) as error:
        raise ValueError(f"pattern={pattern!r}: expected 'noise' or the path of a readable image ({error})") from None


@dataclass
class BlendedConfig(AttackConfig):
    """Blended: `x' = (1 - alpha) * x + alpha * t` for a fixed picture `t`; poisoned rows are relabelled.

    Args:
        alpha (`float`, defaults to 0.2):
            Blend ratio, for training and test alike.
        pattern (`str`, defaults to `"noise"`):
            `"noise"` for a seeded uniform-noise picture, or the path of an image file to blend in.
        pattern_seed (`int`, defaults to 0):
            Seed of the noise picture (part of the trigger, not of the row sampling).
    """

    name: ClassVar[str] = "blended"

    alpha: float = 0.2
    pattern: str = "noise"
    pattern_seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.alpha <= 1:
            raise ValueError(f"alpha={self.alpha}: expected a blend ratio in (0, 1]")
        _check_pattern(self.pattern)

    def trigger(self, height: int, width: int, channels: int) -> np.ndarray:
        return blend_pattern(self.pattern, self.pattern_seed, height, width, channels)

    def apply(self, images: np.ndarray, kind: Kind = "poison", seeds: np.ndarray | None = None) -> np.ndarray:
        _, height, width, channels = images.shape
        t = self.trigger(height, width, channels)
        return to_uint8((1.0 - self.alpha) * images.astype(np.float32) + self.alpha * t)
