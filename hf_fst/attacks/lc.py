"""Label-consistent attack (Turner et al., 2019): adversarially perturbed target-class images plus a corner trigger.

Clean-label: the poisoned rows are target-class images made hard to classify by a PGD perturbation against a
clean model, so the network leans on the four-corner trigger to get them right. At test time only the trigger is
added.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from hf_fst.attacks.base import AttackConfig, Kind, scale_to, transient_field
from hf_fst.attacks.fitted import model_inputs
from hf_fst.console import progress
from hf_fst.forward import logits_of

__all__ = ["LCConfig", "checker_trigger"]


def checker_trigger(height: int, width: int | None = None) -> np.ndarray:
    """A black/white 3x3 checkerboard (white at the corners) stretched to `height` x `width`, uint8."""
    width = height if width is None else width
    base = np.array([[255, 0, 255], [0, 255, 0], [255, 0, 255]], dtype=np.uint8)
    rows = np.minimum((np.arange(height) * 3) // height, 2)
    cols = np.minimum((np.arange(width) * 3) // width, 2)
    return base[np.ix_(rows, cols)]


@dataclass
class LCConfig(AttackConfig):
    """LC: PGD-perturbed target-class images (labels kept) with a checkerboard trigger in all four corners.

    The clean model used for PGD is passed as `model=` (any `AutoModelForImageClassification`, or a module that
    returns logits); it is not part of the JSON config, only `model_name_or_path` is recorded.

    Args:
        eps (`float`, defaults to 8/255):
            L-inf bound of the perturbation, on the [0, 1] pixel scale.
        step_size (`float`, defaults to 1.5/255):
            PGD step on the [0, 1] pixel scale.
        steps (`int`, defaults to 100):
            PGD iterations.
        trigger_size (`int`, defaults to 3):
            Side of each corner checkerboard at 32x32, scaled with the image size.
        pixel_mean, pixel_std (`list[float]`, *optional*):
            Normalisation the model expects (`image_processor.image_mean` / `image_std`); `None` feeds [0, 1] pixels.
        pgd_batch_size (`int`, defaults to 128):
            Images per PGD batch.
        model_name_or_path (`str`, *optional*):
            Description of the clean model, filled from `model.config.name_or_path` (or the class name).
        model (`torch.nn.Module`, *optional*):
            The clean model; needed by `poison_dataset`, not by `backdoor_test_set`.
    """

    name: ClassVar[str] = "lc"
    _clean_label: ClassVar[bool] = True

    eps: float = 8 / 255
    step_size: float = 1.5 / 255
    steps: int = 100
    trigger_size: int = 3
    pixel_mean: list[float] | None = None
    pixel_std: list[float] | None = None
    pgd_batch_size: int = 128
    model_name_or_path: str | None = None
    model: Any = transient_field()

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.eps <= 1 or self.step_size <= 0 or self.steps < 0:
            raise ValueError(
                f"eps={self.eps}, step_size={self.step_size}, steps={self.steps}: expected eps in [0, 1] on the "
                "[0, 1] pixel scale, a positive step_size and steps >= 0"
            )
        if self.trigger_size < 1:
            raise ValueError(f"trigger_size={self.trigger_size}: expected a positive int")
        for key in ("pixel_mean", "pixel_std"):
            value = getattr(self, key)
            if value is not None:
                setattr(self, key, [float(v) for v in np.atleast_1d(value)])
        if self.model is not None and self.model_name_or_path is None:
            config = getattr(self.model, "config", None)
            self.model_name_or_path = getattr(config, "name_or_path", None) or type(self.model).__name__

    # ----------------------------------------------------------------------------------------------------------
    def prepare(self, images: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """PGD (untargeted, L-inf, zero start) against the clean model; returns perturbed uint8 images."""
        if self.model is None:
            raise ValueError(
                "model=: the LC attack needs a clean model for PGD; use get_attack('lc', model=clean_model)"
            )
        model = self.model
        expected = getattr(getattr(model, "config", None), "num_channels", None)
        if expected is not None and images.shape[-1] != expected:
            raise ValueError(
                f"model=: the clean model takes {expected} channels but the images have {images.shape[-1]}; "
                "convert the images or pass a model for their mode"
            )
        device, mean, std = model_inputs(model, images.shape[-1], self.pixel_mean, self.pixel_std)
        was_training = model.training
        model.eval()
        out = np.empty_like(images)
        try:
            batches = range(0, len(images), self.pgd_batch_size)
            for start in progress(batches, desc=f"LC: PGD on {len(images)} images", unit="batch"):
                stop = start + self.pgd_batch_size
                x0 = (
                    torch.as_tensor(np.array(images[start:stop], dtype=np.float32), device=device).permute(0, 3, 1, 2)
                    / 255.0
                )
                y = torch.as_tensor(labels[start:stop], dtype=torch.long, device=device)
                delta = torch.zeros_like(x0)
                for _ in range(self.steps):
                    delta.requires_grad_(True)
                    logits = logits_of(model((torch.clamp(x0 + delta, 0, 1) - mean) / std))
                    (grad,) = torch.autograd.grad(F.cross_entropy(logits, y), delta)
                    with torch.no_grad():
                        delta = torch.clamp(delta + self.step_size * grad.sign(), -self.eps, self.eps)
                        delta = torch.clamp(x0 + delta, 0, 1) - x0
                adv = torch.clamp(x0 + delta.detach(), 0, 1) * 255.0
                out[start:stop] = np.clip(np.rint(adv.permute(0, 2, 3, 1).cpu().numpy()), 0, 255).astype(np.uint8)
        finally:
            model.train(was_training)
        return out

    def corner_slices(self, height: int, width: int) -> list[tuple[slice, slice]]:
        """Rows and columns of the four corner triggers."""
        th, tw = min(height, scale_to(self.trigger_size, height)), min(width, scale_to(self.trigger_size, width))
        rows = (slice(0, th), slice(height - th, height))
        cols = (slice(0, tw), slice(width - tw, width))
        return [(r, c) for r in rows for c in cols]

    def apply(self, images: np.ndarray, kind: Kind = "poison", seeds: np.ndarray | None = None) -> np.ndarray:
        out = images.copy()
        height, width = images.shape[1:3]
        th, tw = min(height, scale_to(self.trigger_size, height)), min(width, scale_to(self.trigger_size, width))
        pattern = checker_trigger(th, tw)[:, :, None]
        for rows, cols in self.corner_slices(height, width):
            out[:, rows, cols, :] = pattern
        return out
