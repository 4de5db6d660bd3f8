"""Poison a `datasets.IterableDataset` (streaming) row by row, in bounded memory.

A stream has no length, so `poison_dataset`'s plan (exactly `round(rate * N)` rows drawn up front) cannot be made.
The streaming policy is per row and deterministic instead: row `i` of the stream draws a uniform number from a
counter-based hash of `(seed, i)`, independent of batch size, of the rows before it and of the machine:

- dirty-label attacks (BadNet, Blended, WaNet, Adaptive-Blend): row `i` is poisoned when its draw is below `rate`,
  so about `rate * N` rows are poisoned (binomial, not exact);
- clean-label attacks (SIG): only rows of the target class are eligible, each poisoned with probability `rate`,
  so `rate` is the share of the *target class* that is poisoned (for the map-style meaning, "share of the whole
  set", pass `rate / share_of_target_class`);
- cover / cross rows (Adaptive-Blend, WaNet noise mode) are drawn among the rows not poisoned, at the rate the
  attack's `num_cover` gives for a large set;
- LC is refused: its PGD pass needs every poisoned image up front.

Rows come out in stream order with `is_poisoned` and `original_label` added, as from `poison_dataset`; modified
images are re-encoded as PNG, the others keep their original bytes. Memory is one map batch at a time.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pyarrow as pa
from datasets import ClassLabel, Image, IterableDataset, Value

from hf_fst.attacks.base import AttackConfig
from hf_fst.attacks.batches import COVER, NEW_COLUMNS, POISON, check_rate, transform_table
from hf_fst.attacks.registry import get_attack
from hf_fst.columns import resolve_columns

__all__ = ["count_poisoned", "poison_iterable_dataset", "row_draws"]

_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)
_LARGE = 1_000_000  # rows used to turn an attack's cover count into a per-row probability


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """The SplitMix64 finaliser on uint64 arrays (wrap-around arithmetic): a fast, portable counter-based hash."""
    with np.errstate(over="ignore"):
        x = (x + np.uint64(0x9E3779B97F4A7C15)) & _MASK64
        x = ((x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _MASK64
        x = ((x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _MASK64
        return x ^ (x >> np.uint64(31))


def row_draws(seed: int, indices: np.ndarray, stream: int) -> np.ndarray:
    """uint64 hashes of `(seed, row index, stream)`; the same on every machine, numpy version and batch size."""
    rows = np.asarray(indices, dtype=np.uint64)
    with np.errstate(over="ignore"):
        # Seed and stream go through the non-linear mix first; rows then step by an odd constant (a bijection), so
        # no two (seed, row) pairs share a draw by construction.
        key = _splitmix64(np.array([int(seed) & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))
        key = _splitmix64(key ^ (np.uint64(stream) * np.uint64(0xD1B54A32D192ED03)))
        return _splitmix64((key + rows * np.uint64(0x9E3779B97F4A7C15)) & _MASK64)


def _uniform(seed: int, indices: np.ndarray, stream: int) -> np.ndarray:
    return (row_draws(seed, indices, stream) >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def _decide(
    rows: np.ndarray, labels: np.ndarray, seed: int, rate: float, cover_rate: float, clean_label: bool, target: int
) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks (poisoned, cover) for these rows: the whole streaming policy, in one place."""
    eligible = labels == target if clean_label else np.ones(len(rows), dtype=bool)
    poison = eligible & (_uniform(seed, rows, 1) < rate)
    cover = ~poison & (_uniform(seed, rows, 2) < cover_rate)
    return poison, cover


def _stream_batch(
    table: pa.Table,
    indices: list[int],
    *,
    seed: int,
    rate: float,
    cover_rate: float,
    clean_label: bool,
    target_label: int,
    num_classes: int,
    attack_config: dict[str, Any],
    **kwargs: Any,
) -> pa.Table:
    """Decide this batch's rows from the per-row draws, then reuse the map-style batch transform."""
    rows = np.asarray(indices, dtype=np.int64)
    labels = table.column(kwargs["label_column"]).to_numpy().astype(np.int64)
    poison, cover = _decide(rows, labels, seed, rate, cover_rate, clean_label, target_label)
    hit = poison | cover
    kinds = np.where(poison[hit], POISON, COVER).astype(np.int8)
    new_labels = labels[hit].copy()
    if not clean_label and poison.any():
        attack = get_attack(attack_config["name"], **{k: v for k, v in attack_config.items() if k != "name"})
        new_labels[kinds == POISON] = attack.target_labels(labels[poison], num_classes)
    return transform_table(
        table,
        indices,
        attack_config=attack_config,
        plan_indices=rows[hit],
        plan_kinds=kinds,
        plan_seeds=row_draws(seed, rows[hit], 3),
        plan_labels=new_labels,
        prepared=None,
        **kwargs,
    )


def poison_iterable_dataset(
    dataset: IterableDataset,
    attack: AttackConfig | str,
    poison_rate: float,
    seed: int = 0,
    image_column: str | None = None,
    label_column: str | None = None,
    *,
    batch_size: int = 1000,
) -> IterableDataset:
    """Lazily poison a stream (see the module docstring for the per-row policy); returns an `IterableDataset`."""
    if not isinstance(dataset, IterableDataset):
        raise ValueError(f"dataset=: expected a datasets.IterableDataset, got {type(dataset).__name__}")
    rate = check_rate(poison_rate)
    attack = get_attack(attack)
    if attack.prepares_images:
        raise ValueError(
            f"attack={attack.name!r} needs an up-front pass over all poisoned images, which a stream cannot give; "
            "load the data set without streaming=True and use poison_dataset"
        )
    if dataset.features is None:
        raise ValueError(
            "dataset=: this stream has unknown features; call dataset = dataset._resolve_features() or "
            "dataset.cast(features) so the image and label columns can be checked"
        )
    image_column, label_column = resolve_columns(dataset, image_column, label_column)
    features = dataset.features
    image_feature = features[image_column]
    label_feature = features[label_column]
    if not isinstance(image_feature, Image):
        raise ValueError(f"image_column={image_column!r} holds {image_feature!r}, not images; pass the right column")
    if not (
        isinstance(label_feature, ClassLabel) or (isinstance(label_feature, Value) and "int" in label_feature.dtype)
    ):
        raise ValueError(f"label_column={label_column!r} holds {label_feature!r}; expected integer class ids")
    taken = [name for name in NEW_COLUMNS if name in features]
    if taken:
        raise ValueError(f"dataset=: already has column(s) {taken} (already poisoned?); start from the clean stream")
    if isinstance(label_feature, ClassLabel):
        num_classes = label_feature.num_classes
        if attack.label_mode == "all-to-one" and attack.target_label >= num_classes:
            raise ValueError(
                f"target_label={attack.target_label} is outside the label set of column {label_column!r} "
                f"(classes 0..{num_classes - 1}); pick a target in that range"
            )
    elif attack.label_mode == "all-to-one":
        num_classes = attack.target_label + 1
    else:
        raise ValueError(
            f"label_column={label_column!r} is a plain integer column, so an all-to-all attack cannot know the number "
            f"of classes; cast it with datasets.ClassLabel(num_classes=...)"
        )
    expected = max(1, round(rate * _LARGE))
    cover_rate = min(1.0, attack.num_cover(expected, rate, _LARGE) / max(1, _LARGE - expected))

    raw_feature = dataclasses.replace(image_feature, decode=False)
    out_features = features.copy()
    out_features[image_column] = raw_feature
    out_features["is_poisoned"] = Value("bool")
    out_features["original_label"] = label_feature
    if attack.is_training_time:
        out_features["trigger_kind"] = Value("int8")
    raw = dataset.cast_column(image_column, raw_feature).with_format("arrow")
    out = raw.map(
        _stream_batch,
        with_indices=True,
        batched=True,
        batch_size=batch_size,
        features=out_features,
        fn_kwargs={
            "seed": int(seed),
            "rate": rate,
            "cover_rate": cover_rate,
            "clean_label": bool(attack.is_clean_label),
            "target_label": int(attack.target_label),
            "num_classes": int(num_classes),
            "attack_config": attack.to_dict(),
            "image_column": image_column,
            "label_column": label_column,
            "image_feature": image_feature,
        },
    )
    return out.with_format(None).cast_column(image_column, image_feature)


def count_poisoned(
    dataset: IterableDataset,
    attack: AttackConfig | str,
    poison_rate: float,
    seed: int = 0,
    image_column: str | None = None,
    label_column: str | None = None,
) -> int:
    """How many rows `poison_iterable_dataset` with the same arguments marks `is_poisoned`, from the labels alone.

    One pass over the label column (no image is decoded), for reports and logs.
    """
    attack = get_attack(attack)
    rate = check_rate(poison_rate)
    image_column, label_column = resolve_columns(dataset, image_column, label_column)
    total, offset = 0, 0
    for batch in dataset.select_columns([label_column]).iter(batch_size=1000):
        labels = np.asarray(batch[label_column], dtype=np.int64)
        rows = np.arange(offset, offset + len(labels))
        poison, _ = _decide(rows, labels, int(seed), rate, 0.0, bool(attack.is_clean_label), int(attack.target_label))
        total += int(poison.sum())
        offset += len(labels)
    return total
