"""Backdoor metrics: clean accuracy (C-Acc), attack success rate (ASR) and robust accuracy (RA).

- C-Acc: accuracy on the clean test set.
- ASR: share of the backdoor test set (`hf_fst.attacks.backdoor_test_set`: every non-target image with the
  trigger, labelled as the target) predicted as the target.
- RA: share of that same set predicted as its true label (`original_label`).

`evaluate_backdoor` computes the three in one call from a model; `compute_backdoor_metrics` plugs into a
`transformers.Trainer`; `load_attack_success_rate()` returns the ASR metric as an offline `evaluate` module.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hf_fst.console import progress
from hf_fst.forward import logits_of, model_device

__all__ = [
    "ASR_METRIC_PATH",
    "attack_success_rate",
    "clean_accuracy",
    "compute_backdoor_metrics",
    "evaluate_backdoor",
    "load_attack_success_rate",
    "predict",
    "robust_accuracy",
]

# Folder of the local `evaluate` module; `evaluate.load(str(ASR_METRIC_PATH))` works offline.
ASR_METRIC_PATH = Path(__file__).resolve().parent / "evaluate_modules" / "attack_success_rate"


def _class_ids(predictions: Any, argument: str) -> np.ndarray:
    """Accept class ids `(n,)` or logits `(n, num_classes)` (numpy, torch or lists) and return int64 class ids."""
    if isinstance(predictions, torch.Tensor):
        predictions = predictions.detach().cpu().numpy()
    array = np.asarray(predictions)
    if array.ndim == 2:
        array = array.argmax(axis=-1)
    if array.ndim != 1:
        raise ValueError(f"{argument}=: expected class ids (n,) or logits (n, num_classes), got shape {array.shape}")
    return array.astype(np.int64)


def _accuracy(predictions: Any, labels: Any, argument: str) -> float:
    predictions = _class_ids(predictions, "predictions")
    labels = _class_ids(labels, argument)
    if len(predictions) != len(labels):
        raise ValueError(
            f"{argument}=: has {len(labels)} entries but predictions= has {len(predictions)}; pass one label per "
            "prediction"
        )
    if len(labels) == 0:
        raise ValueError(f"{argument}=: is empty; the metric is undefined on an empty set")
    return float(np.mean(predictions == labels))


def clean_accuracy(predictions: Any, labels: Any) -> float:
    """C-Acc: share of clean test images predicted as their label, in [0, 1]."""
    return _accuracy(predictions, labels, "labels")


def attack_success_rate(predictions: Any, target_labels: Any) -> float:
    """ASR: share of triggered (non-target) test images predicted as the attack's target, in [0, 1]."""
    return _accuracy(predictions, target_labels, "target_labels")


def robust_accuracy(predictions: Any, original_labels: Any) -> float:
    """RA: share of triggered test images still predicted as their true label, in [0, 1]."""
    return _accuracy(predictions, original_labels, "original_labels")


# --------------------------------------------------------------------------------------------------------------
# Running a model
def _batches(dataset: Any, batch_size: int):
    """Yield batches as dicts of lists; slices a `datasets.Dataset` (one transform call per batch)."""
    if hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__") and hasattr(dataset, "column_names"):
        for start in range(0, len(dataset), batch_size):
            yield dataset[start : start + batch_size]
        return
    rows: list[dict] = []
    for row in dataset:
        rows.append(row)
        if len(rows) == batch_size:
            yield {key: [r[key] for r in rows] for key in rows[0]}
            rows = []
    if rows:
        yield {key: [r[key] for r in rows] for key in rows[0]}


def _stack(values: Any) -> torch.Tensor:
    if isinstance(values, torch.Tensor):
        return values.float()
    if isinstance(values, np.ndarray):
        return torch.from_numpy(values).float()
    return torch.stack([v if isinstance(v, torch.Tensor) else torch.as_tensor(np.asarray(v)) for v in values]).float()


def _run(
    model: torch.nn.Module, dataset: Any, batch_size: int, device: Any, label_keys: tuple[str, ...]
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: expected a positive int")
    device = model_device(model, device)
    predictions: list[np.ndarray] = []
    labels: dict[str, list] = {key: [] for key in label_keys}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            total = math.ceil(len(dataset) / batch_size) if hasattr(dataset, "__len__") else None
            for batch in progress(_batches(dataset, batch_size), total=total, desc="Evaluating", unit="batch"):
                if "pixel_values" not in batch:
                    raise ValueError(
                        f"dataset=: rows have keys {sorted(batch)} but no 'pixel_values'; set a preprocessing "
                        "transform with dataset.with_transform(...) that returns pixel_values"
                    )
                output = model(pixel_values=_stack(batch["pixel_values"]).to(device))
                predictions.append(logits_of(output).argmax(dim=-1).cpu().numpy())
                for key in label_keys:
                    found = key if key in batch else ("label" if key == "labels" and "label" in batch else None)
                    if found is None:
                        raise ValueError(
                            f"dataset=: rows have keys {sorted(batch)} but no {key!r}; pass it through the transform"
                        )
                    labels[key].append(np.asarray(batch[found], dtype=np.int64))
    finally:
        model.train(was_training)
    preds = np.concatenate(predictions) if predictions else np.empty(0, dtype=np.int64)
    return preds.astype(np.int64), {k: np.concatenate(v) if v else np.empty(0, np.int64) for k, v in labels.items()}


def predict(
    model: torch.nn.Module, dataset: Any, batch_size: int = 256, device: str | torch.device | None = None
) -> np.ndarray:
    """Predicted class ids of `model` on `dataset`, whose rows carry `pixel_values` (CHW).

    The model runs in eval mode under `torch.no_grad()` and its train/eval mode is restored afterwards.
    """
    return _run(model, dataset, batch_size, device, ())[0]


def evaluate_backdoor(
    model: torch.nn.Module,
    clean_dataset: Any,
    backdoor_dataset: Any,
    *,
    batch_size: int = 256,
    device: str | torch.device | None = None,
) -> dict[str, float]:
    """C-Acc on `clean_dataset`, ASR and RA on `backdoor_dataset`, in one call.

    Rows carry `pixel_values` and `labels` (the target on the backdoor set); backdoor rows also carry
    `original_label` (the true label), as the preprocessing transforms of the recipes produce.
    """
    clean_predictions, clean = _run(model, clean_dataset, batch_size, device, ("labels",))
    backdoor_predictions, backdoor = _run(model, backdoor_dataset, batch_size, device, ("labels", "original_label"))
    return {
        "clean_accuracy": clean_accuracy(clean_predictions, clean["labels"]),
        "attack_success_rate": attack_success_rate(backdoor_predictions, backdoor["labels"]),
        "robust_accuracy": robust_accuracy(backdoor_predictions, backdoor["original_label"]),
    }


# --------------------------------------------------------------------------------------------------------------
# Trainer integration
def compute_backdoor_metrics(eval_pred: Any) -> dict[str, float]:
    """`compute_metrics` for a `Trainer` evaluated on `eval_dataset={"clean": clean, "backdoor": backdoor}`.

    The Trainer evaluates each entry of the dict separately under the prefix `eval_<name>_`, and this function
    returns `accuracy` for each, so `eval_clean_accuracy` is C-Acc and `eval_backdoor_accuracy` is ASR (the
    backdoor set's labels are the target). To get RA as well, pass the true labels along: with
    `TrainingArguments(label_names=["labels", "original_label"])` and both sets carrying `original_label` (the
    clean set can copy `labels`), the label ids arrive as a pair and this function also returns
    `attack_success_rate` (accuracy against `labels` on rows where they differ from `original_label`) and
    `robust_accuracy` (accuracy against `original_label` on those rows); both are NaN for the clean set.
    """
    predictions = eval_pred.predictions
    if isinstance(predictions, (tuple, list)):
        predictions = predictions[0]
    predictions = _class_ids(predictions, "predictions")
    label_ids = eval_pred.label_ids
    if isinstance(label_ids, (tuple, list)) and len(label_ids) == 2:
        labels, original = (_class_ids(x, "label_ids") for x in label_ids)
    else:
        labels, original = _class_ids(label_ids, "label_ids"), None
    metrics = {"accuracy": clean_accuracy(predictions, labels)}
    if original is not None:
        triggered = labels != original
        if triggered.any():
            metrics["attack_success_rate"] = attack_success_rate(predictions[triggered], labels[triggered])
            metrics["robust_accuracy"] = robust_accuracy(predictions[triggered], original[triggered])
        else:
            metrics["attack_success_rate"] = metrics["robust_accuracy"] = float("nan")
    return metrics


def load_attack_success_rate(**kwargs: Any):
    """The ASR metric as an `evaluate` module loaded from the package folder (no network needed)."""
    import evaluate

    return evaluate.load(str(ASR_METRIC_PATH), **kwargs)
