"""Low-frequency attack (Zeng et al., ICCV 2021): a smooth, universal additive trigger, dirty label.

Most triggers (patches, noise blends, warps) leave high-frequency artefacts that a frequency-domain detector
sees. LF's trigger is a universal adversarial perturbation of a clean model kept low-pass by a Gaussian filter
after every update and rescaled to the range [0, `max_value`] on the [0, 1] pixel scale, so it is smooth and
already nudges clean images toward one class. Poisoned rows get `x + trigger` (clipped) and the target label.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from hf_fst.attacks.base import REFERENCE_SIZE, AttackConfig, Kind, to_uint8
from hf_fst.attacks.fitted import load_trigger, model_inputs, resize_trigger
from hf_fst.forward import logits_of

__all__ = ["LFConfig", "find_low_frequency_trigger", "low_pass", "trigger_energy_below"]


def low_pass(perturbation: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of `(n, channels, height, width)` with std `sigma` pixels and zero padding.

    The kernel has `round(5 * sigma)` taps, as in the LF paper's filter (30 taps for sigma 6 at 32x32).
    """
    taps = max(1, int(round(5 * sigma)))
    offsets = torch.arange(taps, dtype=perturbation.dtype) - (taps - 1) / 2
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(perturbation.device)
    channels = perturbation.shape[1]
    before, after = (taps - 1) // 2, taps // 2
    padded = F.pad(perturbation, (before, after, before, after))
    rows = F.conv2d(padded, kernel.view(1, 1, taps, 1).repeat(channels, 1, 1, 1), groups=channels)
    return F.conv2d(rows, kernel.view(1, 1, 1, taps).repeat(channels, 1, 1, 1), groups=channels)


def _rescale(perturbation: torch.Tensor, max_value: float) -> torch.Tensor:
    """Min-max rescale to [0, max_value], as the paper does after every update (a flat input stays flat)."""
    low, high = perturbation.min(), perturbation.max()
    if float(high - low) == 0.0:
        return torch.zeros_like(perturbation)
    return (perturbation - low) / (high - low) * max_value


@functools.lru_cache(maxsize=16)
def _smooth_noise(seed: int, sigma: float, max_value: float, channels: int) -> np.ndarray:
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(1, channels, REFERENCE_SIZE, REFERENCE_SIZE, generator=generator)
    array = _rescale(low_pass(noise, sigma), max_value)[0].permute(1, 2, 0).numpy()
    array.setflags(write=False)
    return array


def find_low_frequency_trigger(
    model: torch.nn.Module,
    images: np.ndarray,
    target_label: int = 0,
    *,
    sigma: float = 6.0,
    max_value: float = 0.2,
    fooling_rate: float = 0.2,
    max_passes: int = 20,
    step_size: float = 0.05,
    pixel_mean: list[float] | None = None,
    pixel_std: list[float] | None = None,
    batch_size: int = 100,
    seed: int = 0,
) -> np.ndarray:
    """Optimise LF's trigger on a clean model: float32 `(height, width, channels)` in [0, `max_value`].

    A universal perturbation is moved down the gradient of the cross entropy toward `target_label` on `images`
    (uint8 `(n, height, width, channels)`, the paper uses 100 training images), then low-passed (`sigma` pixels
    at 32x32, scaled with the image) and min-max rescaled to [0, `max_value`] after every step. It stops once
    `fooling_rate` of the images not already of the target class are classified as the target, or after
    `max_passes` passes, and returns the perturbation with the best rate seen. (The paper steps with targeted
    DeepFool per image; a batched gradient step reaches the same kind of smooth universal perturbation.)
    """
    if images.ndim != 4 or len(images) == 0:
        raise ValueError(f"images=: expected uint8 (n, height, width, channels) with n >= 1, got {images.shape}")
    _, height, width, channels = images.shape
    device, mean, std = model_inputs(model, channels, pixel_mean, pixel_std)
    x = torch.as_tensor(images, device=device).permute(0, 3, 1, 2).float() / 255.0
    scaled_sigma = sigma * min(height, width) / REFERENCE_SIZE
    target = torch.full((len(x),), int(target_label), dtype=torch.long, device=device)
    generator = torch.Generator().manual_seed(seed)
    v = _rescale(low_pass(torch.randn(1, channels, height, width, generator=generator), scaled_sigma), max_value)
    v = v.to(device)
    was_training = model.training
    model.eval()

    def rate(perturbation: torch.Tensor) -> float:
        with torch.no_grad():
            hits = total = 0
            for start in range(0, len(x), batch_size):
                batch = x[start : start + batch_size]
                clean = logits_of(model((batch - mean) / std)).argmax(-1)
                moved = logits_of(model(((batch + perturbation).clamp(0, 1) - mean) / std)).argmax(-1)
                keep = clean != int(target_label)
                hits += int((moved[keep] == int(target_label)).sum())
                total += int(keep.sum())
        return hits / max(total, 1)

    best, best_rate = v.clone(), rate(v)
    try:
        for _ in range(max_passes):
            if best_rate >= fooling_rate:
                break
            order = torch.randperm(len(x), generator=generator)
            for start in range(0, len(x), batch_size):
                rows = order[start : start + batch_size].to(device)
                v = v.detach().requires_grad_(True)
                logits = logits_of(model(((x[rows] + v).clamp(0, 1) - mean) / std))
                (grad,) = torch.autograd.grad(F.cross_entropy(logits, target[rows]), v)
                with torch.no_grad():
                    step = grad / (grad.abs().max() + 1e-12)
                    v = _rescale(low_pass(v - step_size * step, scaled_sigma), max_value)
            current = rate(v)
            if current >= best_rate:
                best, best_rate = v.detach().clone(), current
    finally:
        model.train(was_training)
    return best[0].permute(1, 2, 0).cpu().numpy().astype(np.float32)


@dataclass
class LFConfig(AttackConfig):
    """LF: add a smooth (low-frequency) universal trigger to the image; poisoned rows are relabelled.

    Args:
        pattern (`str`, defaults to `"smooth-noise"`):
            The path of a `.npy` trigger made by `find_low_frequency_trigger` (float `(h, w, c)` in [0, 1] units;
            the paper's attack, which needs a clean model), or `"smooth-noise"`: seeded Gaussian noise passed
            through the same low-pass filter and rescaling, a model-free stand-in with the same spectrum.
        max_value (`float`, defaults to 0.2):
            Range of the `"smooth-noise"` trigger on the [0, 1] pixel scale (the paper's rescaling).
        sigma (`float`, defaults to 6):
            Std of the low-pass filter in pixels at 32x32, for `"smooth-noise"`.
        pattern_seed (`int`, defaults to 0):
            Seed of the `"smooth-noise"` trigger.
    """

    name: ClassVar[str] = "lf"

    pattern: str = "smooth-noise"
    max_value: float = 0.2
    sigma: float = 6.0
    pattern_seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.max_value <= 1 or self.sigma <= 0:
            raise ValueError(
                f"max_value={self.max_value}, sigma={self.sigma}: expected max_value in (0, 1] and sigma > 0"
            )
        if self.pattern != "smooth-noise":
            try:
                load_trigger(self.pattern)
            except (OSError, ValueError) as error:
                raise ValueError(
                    f"pattern={self.pattern!r}: expected 'smooth-noise' or a .npy file from "
                    f"find_low_frequency_trigger ({error})"
                ) from None

    def trigger(self, height: int, width: int, channels: int) -> np.ndarray:
        """The additive trigger, float32 `(height, width, channels)` in pixel units (0..255 scale)."""
        if self.pattern == "smooth-noise":
            base = _smooth_noise(self.pattern_seed, self.sigma, self.max_value, channels)
        else:
            base = load_trigger(self.pattern)
        base = resize_trigger(base, height, width, channels, "bilinear")
        return base * 255.0

    def apply(self, images: np.ndarray, kind: Kind = "poison", seeds: np.ndarray | None = None) -> np.ndarray:
        _, height, width, channels = images.shape
        return to_uint8(images.astype(np.float32) + self.trigger(height, width, channels)[None])


def trigger_energy_below(trigger: np.ndarray, cutoff: float = 0.25) -> float:
    """Share of the trigger's (mean-removed) spectral energy below `cutoff` of the Nyquist frequency per axis."""
    centred = trigger - trigger.mean(axis=(0, 1), keepdims=True)
    spectrum = np.abs(np.fft.fft2(centred, axes=(0, 1))) ** 2
    fy = np.abs(np.fft.fftfreq(trigger.shape[0]))[:, None, None] * 2
    fx = np.abs(np.fft.fftfreq(trigger.shape[1]))[None, :, None] * 2
    low = (fy <= cutoff) & (fx <= cutoff)
    total = spectrum.sum()
    return float(spectrum[np.broadcast_to(low, spectrum.shape)].sum() / total) if total > 0 else 1.0
