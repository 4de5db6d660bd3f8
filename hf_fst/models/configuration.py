"""Configs of the field's CIFAR networks: depth per stage and a width multiplier, so small members exist for CPUs."""

from __future__ import annotations

from typing import Any

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

__all__ = ["CifarResNetConfig", "PreActResNetConfig"]

BASE_WIDTHS = (64, 128, 256, 512)
"""Stage widths of ResNet-18 at `width_multiplier=1`; stride 1 in the first stage, 2 in the others."""


@strict
class _CifarConfig(PreTrainedConfig):
    """Shared fields: input channels and size, blocks per stage (ResNet-18: 2, 2, 2, 2), width multiplier."""

    num_channels: int = 3
    image_size: int = 32
    depths: list[int] | tuple[int, ...] = (2, 2, 2, 2)
    width_multiplier: float = 1.0

    def __post_init__(self, **kwargs: Any) -> None:
        self.depths = [int(d) for d in self.depths]
        if not self.depths or any(d < 1 for d in self.depths) or len(self.depths) > len(BASE_WIDTHS):
            raise ValueError(f"depths={self.depths}: give 1 to {len(BASE_WIDTHS)} stages of at least one block each")
        if not self.width_multiplier > 0:
            raise ValueError(f"width_multiplier={self.width_multiplier}: must be > 0 (1.0 is ResNet-18's 64-512)")
        super().__post_init__(**kwargs)

    @property
    def hidden_sizes(self) -> list[int]:
        """Channels of each stage (the last one is the head's input)."""
        return [max(1, round(width * self.width_multiplier)) for width in BASE_WIDTHS[: len(self.depths)]]


@strict
class PreActResNetConfig(_CifarConfig):
    """BackdoorBench's `preactresnet18` family (pre-activation basic blocks, no BN after the stem)."""

    model_type = "hf-fst-preact-resnet"


@strict
class CifarResNetConfig(_CifarConfig):
    """The official FST code's `resnet18` family (classic CIFAR ResNet: conv-BN-ReLU stem, basic blocks)."""

    model_type = "hf-fst-cifar-resnet"
