"""Base class of the attack configs and the helpers the triggers share.

An attack config is a plain dataclass: its fields are the attack's hyper-parameters (the defaults
are the BackdoorBench settings the FST paper uses), it serialises to JSON so it can be written into
results and model cards, and it knows how to put its trigger on a batch of uint8 images. The
`datasets` plumbing (which rows, decoding, re-encoding, fingerprints) lives in `poison.py`, so a new
attack only has to say what its trigger does to pixels.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
import torch

__all__ = ["AttackConfig", "LABEL_MODES", "Kind", "RESAMPLING", "scale_to", "to_uint8", "transient_field"]

LABEL_MODES = ("all-to-one", "all-to-all")

# PIL resampling filters by name (the names transformers' processors use, lower-cased).
RESAMPLING = ("nearest", "box", "bilinear", "hamming", "bicubic", "lanczos")

# What a selected row becomes: a poisoned training row (trigger + target label), a cover/cross row
# (modified image, true label kept), or a row of the backdoor test set (test-time trigger).
Kind = Literal["poison", "cover", "test"]

# Triggers are specified at CIFAR-10 size and scaled to the image size from there.
REFERENCE_SIZE = 32


def scale_to(size_at_reference: int, side: int, reference: int = REFERENCE_SIZE) -> int:
    """Scale a trigger length given at `reference` pixels to an image side of `side` pixels (at least 1)."""
    return max(1, int(math.floor(size_at_reference * side / reference + 0.5)))


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Round and clip float pixels to uint8, as every trigger must end in valid pixels."""
    return np.clip(np.rint(images), 0, 255).astype(np.uint8)


@dataclass
class AttackConfig:
    """Parameters shared by every attack.

    Args:
        target_label (`int`, defaults to 0):
            Label the backdoor maps to in all-to-one mode.
        label_mode (`str`, defaults to `"all-to-one"`):
            `"all-to-one"`: every poisoned row gets `target_label`. `"all-to-all"`: a row of class `y` gets
            `(y + 1) % num_classes` (dirty-label attacks only).
        image_size (`int` or `(height, width)`, *optional*):
            Size the images are resized to before the trigger is applied, so the trigger lands at the model's input
            size instead of being resampled by the preprocessing. Only the rows that are re-encoded (poisoned, cover
            and backdoor-test rows) are resized; the model's preprocessing resizes the clean rows to the same size.
            `None` keeps each image's native size and scales the trigger to it.
        model_view (`(top, left, height, width)`, *optional*):
            The part of an `image_size` image the model sees when its processor centre-crops after resizing
            (`crop_pct`, `do_center_crop`). The trigger is put inside this window and scaled to it, so it reaches
            `pixel_values` as specified instead of being cut by the crop. Needs `image_size`.
        resample (`str`, defaults to `"bilinear"`):
            PIL filter used for the resize to `image_size`. Set to the processor's own filter so poisoned and clean
            rows are resized the same way (a second resampling path would be a signal besides the trigger).
    """

    name: ClassVar[str] = "base"
    _clean_label: ClassVar[bool] = False

    target_label: int = 0
    label_mode: str = "all-to-one"
    image_size: int | tuple[int, int] | None = None
    model_view: tuple[int, int, int, int] | None = None
    resample: str = "bilinear"

    def __post_init__(self) -> None:
        if isinstance(self.target_label, bool) or not isinstance(self.target_label, (int, np.integer)):
            raise ValueError(f"target_label={self.target_label!r}: expected a non-negative int class id")
        if self.target_label < 0:
            raise ValueError(f"target_label={self.target_label}: expected a non-negative int class id")
        self.target_label = int(self.target_label)
        if self.label_mode not in LABEL_MODES:
            raise ValueError(f"label_mode={self.label_mode!r}: expected one of {list(LABEL_MODES)}")
        if self.label_mode == "all-to-all" and self.is_clean_label:
            raise ValueError(
                f"label_mode='all-to-all' is not defined for the clean-label attack {self.name!r} (labels are "
                "never changed); use label_mode='all-to-one'"
            )
        if self.image_size is not None:
            size = self.image_size
            if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
                size = (int(size), int(size))
            size = tuple(int(s) for s in size)
            if len(size) != 2 or min(size) < 1:
                raise ValueError(f"image_size={self.image_size!r}: expected a positive int or (height, width)")
            self.image_size = size
        if self.resample not in RESAMPLING:
            raise ValueError(f"resample={self.resample!r}: expected one of {list(RESAMPLING)}")
        if self.model_view is not None:
            view = tuple(int(v) for v in self.model_view)
            if self.image_size is None:
                raise ValueError(f"model_view={self.model_view!r} needs image_size, the size the view is taken from")
            height, width = self.image_size
            inside = len(view) == 4 and min(view[:2]) >= 0 and min(view[2:]) >= 1
            if not (inside and view[0] + view[2] <= height and view[1] + view[3] <= width):
                raise ValueError(
                    f"model_view={self.model_view!r}: expected (top, left, height, width) inside "
                    f"image_size={self.image_size}"
                )
            self.model_view = view

    # ----------------------------------------------------------------------------------------------------------
    # Serialisation
    @property
    def is_clean_label(self) -> bool:
        """Whether poisoned rows keep their true label (and are drawn from the target class only)."""
        return self._clean_label

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of the attack: `name` plus every serialisable field."""
        out: dict[str, Any] = {"name": self.name}
        for f in dataclasses.fields(self):
            if not f.metadata.get("serialize", True):
                continue
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_dict(cls, config: dict[str, Any], **extra: Any) -> AttackConfig:
        """Rebuild a config from `to_dict()` output; `extra` passes non-serialised fields (the LC model)."""
        config = dict(config)
        name = config.pop("name", cls.name)
        if cls is AttackConfig:
            return _subclass_named(name)(**config, **extra)
        if name != cls.name:
            raise ValueError(f"config name {name!r} does not match {cls.__name__} ({cls.name!r})")
        return cls(**config, **extra)

    @classmethod
    def from_json(cls, text: str, **extra: Any) -> AttackConfig:
        return cls.from_dict(json.loads(text), **extra)

    # ----------------------------------------------------------------------------------------------------------
    # Labels and counts
    def target_labels(self, labels: np.ndarray, num_classes: int) -> np.ndarray:
        """Label each poisoned row gets: the target (all-to-one) or the next class (all-to-all)."""
        labels = np.asarray(labels, dtype=np.int64)
        if self.label_mode == "all-to-all":
            return (labels + 1) % num_classes
        return np.full_like(labels, self.target_label)

    def num_cover(self, num_poison: int, poison_rate: float, num_rows: int) -> int:
        """Number of cover rows (modified image, true label) to add next to `num_poison` poisoned rows."""
        return 0

    # ----------------------------------------------------------------------------------------------------------
    # Pixels
    def prepare(self, images: np.ndarray, labels: np.ndarray) -> np.ndarray | None:
        """Optional up-front pass over the poisoned rows only (LC's PGD); None when the attack has none."""
        return None

    @property
    def prepares_images(self) -> bool:
        """Whether `prepare` does work: the poisoned images need an up-front pass (and LC a clean model)."""
        return type(self).prepare is not AttackConfig.prepare

    def apply(self, images: np.ndarray, kind: Kind = "poison", seeds: np.ndarray | None = None) -> np.ndarray:
        """Put the trigger on a batch of same-size images.

        Args:
            images: uint8 array `(n, height, width, channels)` with 1 or 3 channels (alpha is split off before).
            kind: `"poison"` (training trigger), `"cover"` (training trigger on rows that keep their label) or
                `"test"` (test-time trigger).
            seeds: one uint64 per image for attacks with per-image randomness; drawn up front by the caller so
                the result does not depend on batching or on the number of processes.

        Returns:
            A new uint8 array of the same shape.
        """
        raise NotImplementedError

    @property
    def is_training_time(self) -> bool:
        """Whether the training trigger is applied during training (`apply_during_training`) instead of stored.

        `poison_dataset` then chooses and relabels the rows as usual but leaves their pixels alone and adds a
        `trigger_kind` column (0 clean, 1 poisoned, 2 cover); the training loop applies the trigger to each batch
        after the loader's augmentation (`hf_fst.attacks.TriggerCollator`). Backdoor test sets are stored triggered.
        """
        return False

    def apply_during_training(self, pixels: torch.Tensor, kinds: torch.Tensor) -> torch.Tensor:
        """The training trigger on a batch of model inputs `(n, channels, height, width)`, drawn afresh each call.

        `kinds` holds one `trigger_kind` per row (0 leaves the row alone). Only training-time attacks implement it.
        """
        raise NotImplementedError(f"{self.name} is not a training-time attack; its triggers are stored in the data")

    def apply_in_view(self, images: np.ndarray, kind: Kind = "poison", seeds: np.ndarray | None = None) -> np.ndarray:
        """`apply` on the part of the images the model sees (`model_view`), the rest left as it is."""
        return self._in_view(images, lambda window: self.apply(window, kind, seeds))

    def prepare_in_view(self, images: np.ndarray, labels: np.ndarray) -> np.ndarray | None:
        """`prepare` on the part of the images the model sees (`model_view`)."""
        return self._in_view(images, lambda window: self.prepare(window, labels))

    def _in_view(self, images: np.ndarray, change) -> np.ndarray | None:
        """`change` applied to the `model_view` window of `images` and pasted back (None if it returns None)."""
        if self.model_view is None:
            return change(images)
        top, left, height, width = self.model_view
        changed = change(np.ascontiguousarray(images[:, top : top + height, left : left + width]))
        if changed is None:
            return None
        out = images.copy()
        out[:, top : top + height, left : left + width] = changed
        return out

    def describe(self) -> str:
        """One line for logs and model cards."""
        params = ", ".join(f"{k}={v}" for k, v in self.to_dict().items() if k != "name")
        return f"{self.name}({params})"


def transient_field(default: Any = None, **kwargs: Any) -> Any:
    """A field that is kept out of `to_dict()` (objects such as a model)."""
    return field(default=default, repr=False, compare=False, metadata={"serialize": False}, **kwargs)


def _subclass_named(name: str) -> type[AttackConfig]:
    """The attack class called `name`, found among `AttackConfig`'s subclasses (every attack is one).

    Searched breadth first, so a subclass that keeps its parent's name (a tweak of a built-in attack) does not
    replace the attack a serialised config was written by.
    """
    queue = list(AttackConfig.__subclasses__())
    for cls in queue:
        if cls.name == name:
            return cls
        queue.extend(cls.__subclasses__())
    raise ValueError(f"name={name!r}: no attack has this name; known attacks are {sorted({c.name for c in queue})}")
