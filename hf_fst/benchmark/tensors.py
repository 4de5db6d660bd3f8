"""Images held as one uint8 tensor, augmented and evaluated in whole batches.

On a CPU the benchmark's time should go into the model, not into decoding JPEGs or per-image Python loops.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from datasets import Dataset
from PIL import Image

from hf_fst.console import progress
from hf_fst.metrics import attack_success_rate, clean_accuracy, robust_accuracy

__all__ = [
    "AugmentingCollator",
    "EvaluationSets",
    "PIXEL_MEAN",
    "PIXEL_STD",
    "TensorImages",
    "decode_images",
    "normalize",
    "predict",
]


PIXEL_MEAN, PIXEL_STD = 0.5, 0.5


def decode_images(
    dataset: Dataset, image_column: str, batch_size: int = 2000, *, size: int | None = None, desc: str = "Decoding"
) -> torch.Tensor:
    """All images of `dataset` as one uint8 tensor (N, C, H, W), decoded in batches.

    Images that are not `size` x `size` are resized (bilinear) to it; `size=None` needs images of one size.
    """
    chunks = []
    for start in progress(range(0, len(dataset), batch_size), desc=desc, unit="batch"):
        images = [image.convert("RGB") for image in dataset[start : start + batch_size][image_column]]
        if size is not None:
            images = [im if im.size == (size, size) else im.resize((size, size), Image.BILINEAR) for im in images]
        chunks.append(np.stack([np.asarray(image) for image in images]))
    return torch.from_numpy(np.concatenate(chunks)).permute(0, 3, 1, 2).contiguous()


class TensorImages(torch.utils.data.Dataset):
    """Rows `{"pixel_values": uint8 CHW, "labels": int}` over tensors held in memory."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, trigger_kinds: torch.Tensor | None = None) -> None:
        self.images, self.labels, self.trigger_kinds = images, labels, trigger_kinds

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        row = {"pixel_values": self.images[index], "labels": self.labels[index]}
        if self.trigger_kinds is not None:
            row["trigger_kind"] = self.trigger_kinds[index]
        return row


def normalize(images: torch.Tensor) -> torch.Tensor:
    return images.float().div_(255.0).sub_(PIXEL_MEAN).div_(PIXEL_STD)


class AugmentingCollator:
    """Stacks uint8 rows, then random crop (zero padding) and horizontal flip for the whole batch at once.

    `flip=False` keeps the crop only (GTSRB: a mirrored sign is another sign). A training-time `attack` (WaNet)
    triggers the rows whose `trigger_kind` is set after the crop and flip, as its paper warps each batch.
    """

    def __init__(self, padding: int = 4, augment: bool = True, flip: bool = True, attack: Any = None) -> None:
        self.padding, self.augment, self.flip, self.attack = padding, augment, flip, attack

    def without_augmentation(self) -> AugmentingCollator:
        """The same collator without crop and flip (what `fst_alpha="auto"` judges held-out images with)."""
        return AugmentingCollator(self.padding, augment=False, flip=self.flip, attack=self.attack)

    def __call__(self, rows: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        images = torch.stack([row["pixel_values"] for row in rows])
        labels = torch.stack([torch.as_tensor(row["labels"]) for row in rows])
        if self.augment:
            batch, _, height, width = images.shape
            pad = self.padding
            padded = F.pad(images, (pad, pad, pad, pad))
            offsets = torch.randint(0, 2 * pad + 1, (2, batch))
            rows_index = (offsets[0][:, None] + torch.arange(height))[:, None, :, None]
            cols_index = (offsets[1][:, None] + torch.arange(width))[:, None, None, :]
            images = padded[
                torch.arange(batch)[:, None, None, None],
                torch.arange(images.shape[1])[None, :, None, None],
                rows_index,
                cols_index,
            ]
            if self.flip:
                flip = torch.rand(batch) < 0.5
                images = torch.where(flip[:, None, None, None], images.flip(-1), images)
        if self.attack is not None and "trigger_kind" in rows[0]:
            kinds = torch.stack([torch.as_tensor(row["trigger_kind"]) for row in rows]).long()
            images = self.attack.apply_during_training(images.float(), kinds)
        return {"pixel_values": normalize(images), "labels": labels}


@torch.no_grad()
def predict(model: torch.nn.Module, images: torch.Tensor, batch_size: int = 500) -> np.ndarray:
    """Predicted class ids for uint8 images, in eval mode."""
    was_training = model.training
    model.eval()
    predictions = [
        model(pixel_values=normalize(images[start : start + batch_size])).logits.argmax(-1)
        for start in progress(range(0, len(images), batch_size), desc="Evaluating", unit="batch")
    ]
    model.train(was_training)
    return torch.cat(predictions).numpy()


@dataclass
class EvaluationSets:
    clean_images: torch.Tensor
    clean_labels: np.ndarray
    backdoor_images: torch.Tensor
    backdoor_labels: np.ndarray
    backdoor_original_labels: np.ndarray

    def excluding(self, clean_rows: np.ndarray, backdoor_rows: np.ndarray) -> EvaluationSets:
        """These sets without the given rows: test images a model was tuned on must not score it."""
        clean_keep = np.ones(len(self.clean_labels), dtype=bool)
        clean_keep[np.asarray(clean_rows, dtype=np.int64)] = False
        backdoor_keep = np.ones(len(self.backdoor_labels), dtype=bool)
        backdoor_keep[np.asarray(backdoor_rows, dtype=np.int64)] = False
        return EvaluationSets(
            clean_images=self.clean_images[torch.from_numpy(clean_keep)],
            clean_labels=self.clean_labels[clean_keep],
            backdoor_images=self.backdoor_images[torch.from_numpy(backdoor_keep)],
            backdoor_labels=self.backdoor_labels[backdoor_keep],
            backdoor_original_labels=self.backdoor_original_labels[backdoor_keep],
        )

    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        clean = predict(model, self.clean_images)
        backdoor = predict(model, self.backdoor_images)
        return {
            "clean_accuracy": clean_accuracy(clean, self.clean_labels),
            "attack_success_rate": attack_success_rate(backdoor, self.backdoor_labels),
            "robust_accuracy": robust_accuracy(backdoor, self.backdoor_original_labels),
        }
