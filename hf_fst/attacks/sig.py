"""SIG (Barni et al., 2019): a horizontal sinusoidal signal added to target-class images, clean label."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from hf_fst.attacks.base import AttackConfig, Kind, to_uint8

__all__ = ["SIGConfig"]


@dataclass
class SIGConfig(AttackConfig):
    """SIG: `x'[i, j] = x[i, j] + delta * sin(2 * pi * j * frequency / width)`, clipped to [0, 255].

    Clean-label: poisoned rows are drawn from the target class only and keep their label; the network learns to
    tie the signal to the target class. Because the signal has `frequency` periods across the width, it scales
    with the image width by construction.

    Args:
        delta (`float`, defaults to 40):
            Amplitude in pixel values.
        frequency (`float`, defaults to 6):
            Number of periods across the image width.
        test_delta (`float`, *optional*):
            Amplitude of the test-time signal; `None` uses `delta` (BackdoorBench).
    """

    name: ClassVar[str] = "sig"
    _clean_label: ClassVar[bool] = True

    delta: float = 40.0
    frequency: float = 6.0
    test_delta: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.delta <= 0 or (self.test_delta is not None and self.test_delta <= 0):
            raise ValueError(f"delta={self.delta}, test_delta={self.test_delta}: expected positive amplitudes")
        if self.frequency <= 0:
            raise ValueError(f"frequency={self.frequency}: expected a positive number of periods")

    def signal(self, width: int, kind: Kind = "poison") -> np.ndarray:
        """The additive signal of one row of pixels, float32 `(width,)`."""
        delta = self.test_delta if kind == "test" and self.test_delta is not None else self.delta
        columns = np.arange(width, dtype=np.float64)
        return (delta * np.sin(2 * np.pi * columns * self.frequency / width)).astype(np.float32)

    def apply(self, images: np.ndarray, kind: Kind = "poison", seeds: np.ndarray | None = None) -> np.ndarray:
        signal = self.signal(images.shape[2], kind)
        return to_uint8(images.astype(np.float32) + signal[None, None, :, None])
