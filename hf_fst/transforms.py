"""Images to `pixel_values`: the model's own processor or a default one, plus the paper's crop-and-flip augmentation.

Also what the recipes save next to a model that came without an image processor, so every checkpoint they write
preprocesses the same way in `pipeline("image-classification")`.
"""

from __future__ import annotations

import copy
import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

__all__ = [
    "DEFAULT_IMAGE_MEAN",
    "DEFAULT_IMAGE_STD",
    "ImageClassificationTransform",
    "augmentation_epoch_callback",
    "build_transform",
    "collate_image_batch",
    "default_image_processor",
    "match_attack_to_model",
    "model_input_size",
    "native_image_size",
    "processor_geometry",
]

# Same neutral normalisation as transformers' IMAGENET_STANDARD_MEAN/STD: maps [0, 1] to [-1, 1].
DEFAULT_IMAGE_MEAN: float = 0.5
DEFAULT_IMAGE_STD: float = 0.5


def _size_fields(size: Any) -> Any:
    """A processor's `size`/`crop_size` as a plain dict when it is a mapping or transformers' SizeDict."""
    if isinstance(size, Mapping):
        return {k: v for k, v in size.items() if v is not None}
    if hasattr(size, "height"):  # transformers' SizeDict
        return {k: v for k in ("height", "width", "shortest_edge") if (v := getattr(size, k, None)) is not None}
    return size


def _pair(size: Any) -> tuple[int, int] | None:
    if size is None:
        return None
    if isinstance(size, int):
        return (size, size)
    size = _size_fields(size)
    if isinstance(size, Mapping):
        if "height" in size and "width" in size:
            return (int(size["height"]), int(size["width"]))
        if "shortest_edge" in size:
            edge = int(size["shortest_edge"])
            return (edge, edge)
        return None
    if isinstance(size, Sequence) and len(size) == 2:
        return (int(size[0]), int(size[1]))
    return None


def _per_channel(values: Any, channels: int) -> list[float]:
    if values is None:
        return [0.0] * channels
    values = [float(v) for v in (values if isinstance(values, Iterable) else [values])]
    if len(values) == channels:
        return values
    if len(values) == 1:
        return values * channels
    return [float(np.mean(values))] * channels


def _to_pil(image: Any) -> Image.Image:
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, Mapping):  # Image(decode=False) rows
        import io

        if image.get("bytes") is not None:
            return Image.open(io.BytesIO(image["bytes"]))
        return Image.open(image["path"])
    array = np.asarray(image)
    if array.dtype != np.uint8:
        array = np.clip(array, 0, 255).astype(np.uint8)
    return Image.fromarray(array)


class ImageClassificationTransform:
    """Batch transform for `Dataset.with_transform`: images to `pixel_values`, labels to `labels`.

    A class rather than a closure so it pickles (DataLoader workers, datasets fingerprints). Images are converted to
    the model's channel count, then either handed to the model's image processor or kept at native size (resized
    only when the model fixes an input size), scaled to [0, 1] and normalised. Training augmentation follows the
    paper: random crop after zero-pixel padding, and a horizontal flip, both switchable.
    """

    def __init__(
        self,
        image_column: str,
        label_column: str,
        *,
        num_channels: int = 3,
        image_processor: Any = None,
        size: tuple[int, int] | None = None,
        mean: Sequence[float] | float = DEFAULT_IMAGE_MEAN,
        std: Sequence[float] | float = DEFAULT_IMAGE_STD,
        train: bool = False,
        augment: bool = True,
        horizontal_flip: bool = True,
        crop_padding: int | None = None,
        keep_original_label: bool = True,
        seed: int | None = None,
    ) -> None:
        self.image_column = image_column
        self.label_column = label_column
        self.num_channels = int(num_channels)
        self.image_processor = image_processor
        self.size = size
        if image_processor is not None:
            # Only used for the padding value of a black pixel, -mean/std, which does not depend on rescaling.
            normalizes = getattr(image_processor, "do_normalize", True)
            mean = getattr(image_processor, "image_mean", None) if normalizes else 0.0
            std = getattr(image_processor, "image_std", None) if normalizes else 1.0
        self.mean = _per_channel(mean, self.num_channels)
        self.std = [s if s else 1.0 for s in _per_channel(std if std is not None else 1.0, self.num_channels)]
        self.train = train
        self.augment = augment
        self.horizontal_flip = horizontal_flip
        self.crop_padding = crop_padding
        self.keep_original_label = keep_original_label
        self.seed = seed
        self.epoch = 0  # set by `AugmentationEpochCallback` at every epoch start

    @property
    def mode(self) -> str:
        return "L" if self.num_channels == 1 else "RGB"

    def without_augmentation(self) -> ImageClassificationTransform:
        """A copy that prepares images as for evaluation (what `fst_alpha="auto"` judges held-out images with)."""
        plain = copy.copy(self)
        plain.train = False
        return plain

    def _pixels(self, images: list[Image.Image]) -> torch.Tensor:
        if self.image_processor is not None:
            out = self.image_processor(images=images, return_tensors="pt")
            return torch.as_tensor(out["pixel_values"], dtype=torch.float32)
        if self.size is not None:
            images = [
                im
                if im.size == (self.size[1], self.size[0])
                else im.resize((self.size[1], self.size[0]), Image.BILINEAR)
                for im in images
            ]
        arrays = [np.asarray(im, dtype=np.float32) for im in images]
        shapes = {a.shape for a in arrays}
        if len(shapes) > 1:
            raise ValueError(
                f"images in {self.image_column!r} have different sizes {sorted(shapes)[:3]}; give the model an image "
                "processor (preprocessor_config.json) or a config with image_size so they can be resized"
            )
        batch = torch.from_numpy(np.stack(arrays) / 255.0).float()
        batch = batch.unsqueeze(1) if batch.ndim == 3 else batch.permute(0, 3, 1, 2)
        mean = torch.tensor(self.mean).view(1, -1, 1, 1)
        std = torch.tensor(self.std).view(1, -1, 1, 1)
        return (batch - mean) / std

    def _draws(self, pixels: torch.Tensor, pad: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Crop offsets `(n, 2)` and flip flags `(n,)` for a batch.

        Without a seed they come from torch's global RNG. With one, each row's draw depends only on (seed, epoch, the
        row's pixels): the Trainer fetches the first batches after `--resume_from_checkpoint` before it restores the
        RNG state, so global-RNG augmentation would make a resumed run differ from an uninterrupted one.
        """
        count = pixels.shape[0]
        if self.seed is None:
            return torch.randint(0, 2 * pad + 1, (count, 2)), torch.rand(count) < 0.5
        offsets, flips = [], []
        for row in pixels:
            digest = hashlib.blake2b(row.contiguous().numpy().tobytes(), digest_size=8).digest()
            rng = np.random.default_rng([int(self.seed), int(self.epoch), int.from_bytes(digest, "little")])
            offsets.append(rng.integers(0, 2 * pad + 1, size=2))
            flips.append(rng.random() < 0.5)
        return torch.as_tensor(np.stack(offsets), dtype=torch.long), torch.as_tensor(flips)

    def _augment(self, pixels: torch.Tensor) -> torch.Tensor:
        """Random crop with padding and horizontal flip (see `_draws` for where the randomness comes from)."""
        _, channels, height, width = pixels.shape
        pad = self.crop_padding if self.crop_padding is not None else max(1, min(height, width) // 8)
        offsets, flip = self._draws(pixels, max(pad, 0))
        if pad > 0:
            # Pad with the value a black pixel has after normalisation, as padding before normalising would.
            fill = (-torch.tensor(self.mean) / torch.tensor(self.std)).view(1, channels, 1, 1)
            padded = fill.expand(pixels.shape[0], channels, height + 2 * pad, width + 2 * pad).clone()
            padded[:, :, pad : pad + height, pad : pad + width] = pixels
            pixels = torch.stack(
                [padded[i, :, y : y + height, x : x + width] for i, (y, x) in enumerate(offsets.tolist())]
            )
        if self.horizontal_flip:
            pixels = torch.where(flip.view(-1, 1, 1, 1), pixels.flip(-1), pixels)
        return pixels

    def __call__(self, batch: Mapping[str, list]) -> dict[str, Any]:
        images = [_to_pil(im).convert(self.mode) for im in batch[self.image_column]]
        pixels = self._pixels(images)
        if self.train and self.augment:
            pixels = self._augment(pixels)
        out: dict[str, Any] = {
            "pixel_values": pixels.contiguous(),
            "labels": torch.as_tensor([int(v) for v in batch[self.label_column]], dtype=torch.long),
        }
        if "trigger_kind" in batch:  # a training-time attack's rows (hf_fst.attacks.TriggerCollator)
            out["trigger_kind"] = torch.as_tensor([int(v) for v in batch["trigger_kind"]], dtype=torch.int8)
        if self.keep_original_label and "original_label" in batch:
            out["original_label"] = torch.as_tensor([int(v) for v in batch["original_label"]], dtype=torch.long)
        return out


def model_input_size(config: Any, image_processor: Any = None) -> tuple[int, int] | None:
    """Input size the model needs: the processor's, else `config.image_size`, else None (native size)."""
    if image_processor is not None:
        size = (
            _pair(getattr(image_processor, "crop_size", None))
            if getattr(image_processor, "do_center_crop", False)
            else None
        )
        return size or _pair(getattr(image_processor, "size", None))
    return _pair(getattr(config, "image_size", None))


def build_transform(
    model: Any,
    image_processor: Any,
    image_column: str,
    label_column: str,
    *,
    train: bool = False,
    augment: bool = True,
    horizontal_flip: bool = True,
    crop_padding: int | None = None,
    keep_original_label: bool | None = None,
    seed: int | None = None,
) -> ImageClassificationTransform:
    """The transform for a model: its image processor when it has one, else native size and default normalisation.

    `seed` makes training augmentation a function of (seed, epoch, row), which a resumed run reproduces exactly;
    add `AugmentationEpochCallback(transform)` to the Trainer so the epoch is known.
    """
    config = getattr(model, "config", model)
    return ImageClassificationTransform(
        image_column,
        label_column,
        num_channels=int(getattr(config, "num_channels", 3) or 3),
        image_processor=image_processor,
        size=None if image_processor is not None else model_input_size(config),
        train=train,
        augment=augment,
        horizontal_flip=horizontal_flip,
        crop_padding=crop_padding,
        keep_original_label=not train if keep_original_label is None else keep_original_label,
        seed=seed,
    )


def augmentation_epoch_callback(transform: ImageClassificationTransform):
    """A `TrainerCallback` that tells a seeded transform which epoch is starting (also right after a resume)."""
    from transformers import TrainerCallback

    class AugmentationEpochCallback(TrainerCallback):
        def on_epoch_begin(self, args, state, control, **kwargs):
            # state.epoch is e + k/n mid-epoch (resume) and exactly e at an epoch boundary.
            transform.epoch = math.floor((state.epoch or 0.0) + 1e-9)

    return AugmentationEpochCallback()


def default_image_processor(
    config: Any,
    image_size: tuple[int, int],
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    normalize: bool = True,
):
    """An image processor saved next to models that came without one: resize, scale to [0, 1], normalise.

    The default normalisation is this toolkit's (0.5, 0.5); imported checkpoints pass their toolkit's `mean`/`std`,
    or `normalize=False` for models trained on unnormalised pixels.
    """
    try:
        from transformers import ViTImageProcessorPil as Processor
    except ImportError:  # older transformers, or a build where the PIL class has another name
        from transformers import ViTImageProcessor as Processor

    channels = int(getattr(config, "num_channels", 3) or 3)
    return Processor(
        do_resize=True,
        size={"height": int(image_size[0]), "width": int(image_size[1])},
        do_rescale=True,
        do_normalize=normalize,
        image_mean=list(mean) if mean is not None else [DEFAULT_IMAGE_MEAN] * channels,
        image_std=list(std) if std is not None else [DEFAULT_IMAGE_STD] * channels,
    )


def native_image_size(dataset, image_column: str) -> tuple[int, int]:
    """(height, width) of the first image: the size used when neither processor nor config fixes one."""
    from datasets import IterableDataset

    row = next(iter(dataset)) if isinstance(dataset, IterableDataset) else dataset[0]
    image = _to_pil(row[image_column])
    return (image.height, image.width)


def _resample_name(image_processor: Any) -> str:
    from hf_fst.attacks.base import RESAMPLING

    value = getattr(image_processor, "resample", None)
    if value is None:
        return "bilinear"
    try:
        return Image.Resampling(int(value)).name.lower()
    except (TypeError, ValueError):  # a torchvision InterpolationMode or a string
        name = str(getattr(value, "value", value)).lower()
        return name if name in RESAMPLING else "bilinear"


def _resized(image_processor: Any, native: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int] | None]:
    """(size after the processor's resize, size of its centre crop or None), as transformers computes them."""
    if not getattr(image_processor, "do_resize", True):
        resized = native
    else:
        size = _size_fields(getattr(image_processor, "size", None))
        size = size if isinstance(size, Mapping) else {}
        edge = size.get("shortest_edge")
        crop_pct = getattr(image_processor, "crop_pct", None)
        if size.get("height") and size.get("width"):
            resized = (int(size["height"]), int(size["width"]))
        elif edge and crop_pct and type(image_processor).__name__.startswith("ConvNext"):
            if edge >= 384:  # ConvNeXt warps large sizes to a square and does not crop
                resized = (int(edge), int(edge))
            else:
                return _short_edge(native, int(int(edge) / crop_pct)), (int(edge), int(edge))
        elif edge:
            resized = _short_edge(native, int(edge))
        else:
            return native, None
    crop = (
        _pair(getattr(image_processor, "crop_size", None))
        if getattr(image_processor, "do_center_crop", False)
        else None
    )
    return resized, crop


def _short_edge(native: tuple[int, int], edge: int) -> tuple[int, int]:
    height, width = native
    if width <= height:
        return (int(edge * height / width), edge)
    return (edge, int(edge * width / height))


def processor_geometry(
    image_processor: Any, native: tuple[int, int]
) -> tuple[tuple[int, int], tuple[int, int, int, int] | None, str]:
    """Where a `native`-sized image's pixels go in the processor: resized size, centre-crop window, filter.

    Returns `(resized, view, resample)`: the (height, width) after the processor's resize, the
    `(top, left, height, width)` window its centre crop keeps (None without a crop), and the PIL filter name. The
    result is checked by running the processor itself on an image of the resized size: it must come back as
    exactly that window, unchanged. A processor that does something else is refused with a clear error.
    """
    resized, crop = _resized(image_processor, native)
    view = None
    if crop is not None and crop != resized:
        top, left = (resized[0] - crop[0]) // 2, (resized[1] - crop[1]) // 2
        if top < 0 or left < 0:
            raise ValueError(
                f"image_processor: its crop {crop} is larger than its resized image {resized}; pass the attack an "
                "explicit image_size instead"
            )
        view = (top, left, crop[0], crop[1])
    probe = np.random.default_rng(0).integers(0, 256, (*resized, 3), dtype=np.uint8)
    out = image_processor(images=[Image.fromarray(probe)], do_rescale=False, do_normalize=False, return_tensors="np")[
        "pixel_values"
    ][0]
    top, left, height, width = view or (0, 0, *resized)
    expected = probe[top : top + height, left : left + width].transpose(2, 0, 1)
    if out.shape != expected.shape or not np.array_equal(np.rint(out).astype(np.int64), expected):
        raise ValueError(
            f"image_processor: {type(image_processor).__name__} does not reduce to a resize to {resized} and a "
            f"centre crop {view}; give the attack an explicit image_size (triggers are then put at that size)"
        )
    return resized, view, _resample_name(image_processor)


def match_attack_to_model(attack: Any, model: Any, image_processor: Any, dataset, image_column: str):
    """Put the trigger where the model sees it when preprocessing resizes or crops the images.

    A 3x3 BadNet patch put on a 32x32 image and then resized to 224x224 is no longer the attack that was asked for
    (BackdoorBench applies triggers at the model's input size); a processor that resizes to 256 and centre-crops
    224 (`crop_pct`) would also cut a corner trigger. So the poisoned rows are resized the way the processor resizes
    (same size, same filter) and the trigger is put, at the model's input size, inside the window the crop keeps:
    after the processor, it reaches `pixel_values` as specified. An explicit `image_size` in the attack parameters
    is kept as given.
    """
    if getattr(attack, "image_size", None) is not None:
        return attack
    from hf_fst.attacks import get_attack

    if image_processor is None:
        size = model_input_size(getattr(model, "config", model))
        if size is None or size == native_image_size(dataset, image_column):
            return attack
        return get_attack(attack, image_size=size)
    native = native_image_size(dataset, image_column)
    resized, view, resample = processor_geometry(image_processor, native)
    if resized == native and view is None:
        return attack
    return get_attack(attack, image_size=resized, model_view=view, resample=resample)


def collate_image_batch(rows: list[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
    """Stack `pixel_values` and `labels` only, so stray columns never reach `model(**inputs)`."""
    return {
        "pixel_values": torch.stack([torch.as_tensor(r["pixel_values"]) for r in rows]),
        "labels": torch.as_tensor([int(r["labels"]) for r in rows], dtype=torch.long),
    }
