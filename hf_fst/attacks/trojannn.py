"""TrojanNN (Liu et al., NDSS 2018): a trigger optimised to excite chosen neurons of a clean model, dirty label.

The trigger lives in a fixed mask. Its pixels are tuned so that the inputs of the classifier head that are most
strongly connected to it (largest summed |weight| over the classes) reach a high target activation; training on
rows stamped with it then ties those neurons to the target class, so the backdoor needs little poisoning.
BackdoorBench's settings for PreAct-ResNet-18: the head's input, 2 neurons, target value 100, 1000 sign-gradient
steps of 0.1 within 0.3 of the starting mask image on the [0, 1] scale, 10% poisoning, target class 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from hf_fst.attacks.base import REFERENCE_SIZE, AttackConfig, Kind, scale_to, to_uint8
from hf_fst.attacks.fitted import load_trigger, model_inputs, resize_trigger
from hf_fst.heads import find_linear_head

__all__ = ["TrojanNNConfig", "find_trojan_trigger", "square_mask", "most_connected_neurons"]


def square_mask(height: int, width: int, side: int = 10, channels: int = 3) -> np.ndarray:
    """A white square of `side` pixels at 32x32 (scaled) in the bottom-right corner: float32 in [0, 1]."""
    mask = np.zeros((height, width, channels), dtype=np.float32)
    mask[height - scale_to(side, height) :, width - scale_to(side, width) :] = 1.0
    return mask


def most_connected_neurons(head: torch.nn.Linear, count: int) -> torch.Tensor:
    """Indices of the head's `count` inputs with the largest summed |weight| over the classes."""
    return torch.argsort(head.weight.detach().abs().sum(0), descending=True)[:count]


def find_trojan_trigger(
    model: torch.nn.Module,
    mask: np.ndarray,
    *,
    num_neurons: int = 2,
    target_value: float = 100.0,
    steps: int = 1000,
    step_size: float = 0.1,
    eps: float = 0.3,
    pixel_mean: list[float] | None = None,
    pixel_std: list[float] | None = None,
    head_name: str | None = None,
) -> np.ndarray:
    """Tune the pixels inside `mask` (float `(h, w, c)` in [0, 1], 0 outside) to excite the head's inputs.

    Minimises the squared distance of the `num_neurons` most connected head inputs to `target_value` with signed
    gradient steps, staying within `eps` of `mask` and in [0, 1]; pixels outside the mask stay 0. Returns the
    trigger as float32 `(h, w, c)` in [0, 1].
    """
    if mask.ndim != 3 or not (mask > 0).any():
        raise ValueError(
            f"mask=: expected a float (height, width, channels) image with some pixels > 0, got {mask.shape}"
        )
    _, head = find_linear_head(model, head_name)
    neurons = most_connected_neurons(head, num_neurons)
    device, mean, std = model_inputs(model, mask.shape[-1], pixel_mean, pixel_std)
    start = torch.as_tensor(mask, device=device).permute(2, 0, 1)[None].float()
    keep = (start > 0).float()
    captured: list[torch.Tensor] = []
    hook = head.register_forward_hook(lambda module, inputs, output: captured.append(inputs[0]))
    was_training = model.training
    model.eval()
    image = start.clone()
    try:
        for _ in range(steps):
            captured.clear()
            image.requires_grad_(True)
            model((image * keep - mean) / std)
            features = captured[-1]
            cost = ((features[:, neurons] - target_value) ** 2).sum()
            (grad,) = torch.autograd.grad(cost, image)
            with torch.no_grad():
                image = (start + (image - step_size * grad.sign() - start).clamp(-eps, eps)).clamp(0, 1)
    finally:
        hook.remove()
        model.train(was_training)
    return (image * keep)[0].permute(1, 2, 0).detach().cpu().numpy().astype(np.float32)


@dataclass
class TrojanNNConfig(AttackConfig):
    """TrojanNN: add a neuron-exciting trigger inside a fixed mask; poisoned rows are relabelled.

    Args:
        pattern (`str`, defaults to `"square"`):
            The path of a `.npy` trigger made by `find_trojan_trigger` (the paper's attack, which needs a clean
            model), or `"square"`: the un-optimised starting mask (a white square), a model-free stand-in.
        mask_size (`int`, defaults to 10):
            Side of the square mask at 32x32 (scaled with the image), bottom-right corner.
    """

    name: ClassVar[str] = "trojannn"

    pattern: str = "square"
    mask_size: int = 10

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mask_size < 1 or self.mask_size > REFERENCE_SIZE:
            raise ValueError(f"mask_size={self.mask_size}: expected a side in [1, {REFERENCE_SIZE}] pixels at 32x32")
        if self.pattern != "square":
            try:
                load_trigger(self.pattern, 0.0, 1.0)
            except (OSError, ValueError) as error:
                raise ValueError(
                    f"pattern={self.pattern!r}: expected 'square' or a .npy file from find_trojan_trigger ({error})"
                ) from None

    def trigger(self, height: int, width: int, channels: int) -> np.ndarray:
        """The additive trigger, float32 `(height, width, channels)` in pixel units (0..255 scale)."""
        if self.pattern == "square":
            return square_mask(height, width, self.mask_size, channels) * 255.0
        base = resize_trigger(load_trigger(self.pattern, 0.0, 1.0), height, width, channels, "nearest")
        return base * 255.0

    def apply(self, images: np.ndarray, kind: Kind = "poison", seeds: np.ndarray | None = None) -> np.ndarray:
        _, height, width, channels = images.shape
        return to_uint8(images.astype(np.float32) + self.trigger(height, width, channels)[None])
