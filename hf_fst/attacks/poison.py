"""Poison a `datasets.Dataset` with an attack, and build the backdoor test set.

Both functions are one `Dataset.map(batched=True)` over the image column cast to `Image(decode=False)`: rows that
are not selected pass through as their original encoded bytes, and only the selected rows are decoded, given the
trigger (vectorised over same-size images) and re-encoded as PNG (lossless, so the trigger survives). All
randomness (which rows, per-row masks and noise) is drawn up front from `numpy.random.default_rng(seed)`, and
the map gets an explicit fingerprint computed from the input fingerprint and the attack, so the same call gives
the same rows, pixels and fingerprint, and a cache hit for datasets backed by files, whatever the batch size or
`num_proc`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from datasets import ClassLabel, Dataset, Image, IterableDataset, Value
from datasets.fingerprint import Hasher

from hf_fst.attacks.base import AttackConfig
from hf_fst.attacks.batches import (
    COVER,
    NEW_COLUMNS,
    POISON,
    TEST,
    check_rate,
    decode_colors,
    grouped,
    transform_table,
)
from hf_fst.attacks.registry import get_attack
from hf_fst.attacks.streaming import poison_iterable_dataset
from hf_fst.columns import resolve_columns

__all__ = ["PoisonPlan", "backdoor_test_rows", "backdoor_test_set", "plan_poisoning", "poison_dataset"]

# Bump when the pixels produced for a given config change, so stale caches are not reused.
_FORMAT_VERSION = "hf-fst-poison-1"


@dataclass(frozen=True)
class PoisonPlan:
    """Which rows an attack modifies, decided up front.

    Attributes:
        indices: sorted row positions of every modified row (int64).
        kinds: per modified row, 1 = poisoned (trigger, label changed for dirty-label attacks), 2 = cover/cross
            (modified image, true label kept), 3 = backdoor test row.
        seeds: per modified row, a uint64 seed for the attack's per-image randomness.
        labels: per modified row, the label it ends up with.
    """

    indices: np.ndarray
    kinds: np.ndarray
    seeds: np.ndarray
    labels: np.ndarray

    @property
    def poison_indices(self) -> np.ndarray:
        return self.indices[self.kinds == POISON]

    @property
    def cover_indices(self) -> np.ndarray:
        return self.indices[self.kinds == COVER]


# --------------------------------------------------------------------------------------------------------------
# Argument checks (all cheap, run before any decoding)
def _check_dataset(dataset: Any) -> None:
    if isinstance(dataset, Dataset):
        return
    kind = type(dataset).__name__
    if kind == "DatasetDict":
        raise ValueError(
            f"dataset=: got a DatasetDict with splits {list(dataset)}; pass one split, e.g. dataset['train']"
        )
    raise ValueError(
        f"dataset=: expected a map-style datasets.Dataset, got {kind}; load it without streaming=True "
        "(or build one with Dataset.from_generator)"
    )


def _check_num_proc(num_proc: Any) -> None:
    if num_proc is not None and (isinstance(num_proc, bool) or not isinstance(num_proc, int) or num_proc < 1):
        raise ValueError(f"num_proc={num_proc!r}: expected None or a positive int")


def _check_columns(dataset: Dataset, image_column: str | None, label_column: str | None) -> tuple[str, str]:
    image_column, label_column = resolve_columns(dataset, image_column, label_column)
    features = dataset.features
    if not isinstance(features[image_column], Image):
        raise ValueError(
            f"image_column={image_column!r} holds {features[image_column]!r}, not images; cast it with "
            f"dataset.cast_column({image_column!r}, datasets.Image()) or pass the right column"
        )
    label_feature = features[label_column]
    if not (
        isinstance(label_feature, ClassLabel) or (isinstance(label_feature, Value) and "int" in label_feature.dtype)
    ):
        raise ValueError(
            f"label_column={label_column!r} holds {label_feature!r}; expected integer class ids (ClassLabel or int); "
            f"pass the right column or cast it with dataset.class_encode_column({label_column!r})"
        )
    taken = [name for name in NEW_COLUMNS if name in dataset.column_names]
    if taken:
        raise ValueError(
            f"dataset=: already has column(s) {taken} (already poisoned?); start from the clean dataset or "
            f"remove them with dataset.remove_columns({taken})"
        )
    return image_column, label_column


def _read_labels(dataset: Dataset, label_column: str) -> np.ndarray:
    column = dataset.select_columns([label_column]).with_format("arrow")[:][label_column]
    return column.to_numpy().astype(np.int64)


def _num_classes(dataset: Dataset, label_column: str, labels: np.ndarray) -> int:
    feature = dataset.features[label_column]
    if isinstance(feature, ClassLabel):
        return feature.num_classes
    return int(labels.max()) + 1 if len(labels) else 0


def _check_target(attack: AttackConfig, num_classes: int, label_column: str) -> None:
    if attack.label_mode == "all-to-one" and attack.target_label >= num_classes:
        raise ValueError(
            f"target_label={attack.target_label} is outside the label set of column {label_column!r} "
            f"(classes 0..{num_classes - 1}); pick a target in that range"
        )


def _round(x: float) -> int:
    return int(math.floor(x + 0.5))


# --------------------------------------------------------------------------------------------------------------
# The plan
def plan_poisoning(
    labels: np.ndarray, attack: AttackConfig, poison_rate: float, seed: int = 0, num_classes: int | None = None
) -> PoisonPlan:
    """Decide which rows to poison (and cover), with which seeds and labels, from `labels` alone.

    Dirty-label attacks draw `round(poison_rate * N)` rows uniformly from the whole set; clean-label attacks draw
    the same number from the target class only. Cover/cross rows (Adaptive-Blend, WaNet noise mode) are drawn from
    the remaining rows.
    """
    rate = check_rate(poison_rate)
    labels = np.asarray(labels, dtype=np.int64)
    num_rows = len(labels)
    num_classes = int(labels.max()) + 1 if num_classes is None and num_rows else (num_classes or 0)
    _check_target(attack, num_classes, "labels")
    num_poison = _round(rate * num_rows)
    if num_poison == 0:
        raise ValueError(
            f"poison_rate={rate} selects round({rate} * {num_rows}) = 0 rows; use a larger rate or dataset"
        )
    rng = np.random.default_rng(seed)
    if attack.is_clean_label:
        pool = np.flatnonzero(labels == attack.target_label)
        if num_poison > len(pool):
            raise ValueError(
                f"poison_rate={rate}: the clean-label attack {attack.name!r} needs round({rate} * {num_rows}) = "
                f"{num_poison} images of target class {attack.target_label}, but only {len(pool)} exist; use "
                f"poison_rate <= {len(pool) / num_rows:.4g}"
            )
    else:
        pool = np.arange(num_rows)
    poison = rng.choice(pool, size=num_poison, replace=False)
    num_cover = attack.num_cover(num_poison, rate, num_rows)
    cover = np.empty(0, dtype=np.int64)
    if num_cover:
        rest = np.setdiff1d(np.arange(num_rows), poison, assume_unique=True)
        if num_cover > len(rest):
            raise ValueError(
                f"poison_rate={rate}: {attack.name!r} needs {num_poison} poisoned + {num_cover} cover rows but the "
                f"dataset has {num_rows}; use a smaller rate"
            )
        cover = rng.choice(rest, size=num_cover, replace=False)
    seeds = rng.integers(0, np.iinfo(np.int64).max, size=num_poison + num_cover, dtype=np.int64).astype(np.uint64)
    indices = np.concatenate([poison, cover]).astype(np.int64)
    kinds = np.concatenate([np.full(num_poison, POISON), np.full(num_cover, COVER)]).astype(np.int8)
    new_labels = labels[indices].copy()
    if not attack.is_clean_label:
        new_labels[:num_poison] = attack.target_labels(labels[poison], num_classes)
    order = np.argsort(indices, kind="stable")
    return PoisonPlan(indices[order], kinds[order], seeds[order], new_labels[order])


# --------------------------------------------------------------------------------------------------------------
# Pixels


def _prepare(
    dataset: Dataset, image_column: str, image_feature: Image, attack: AttackConfig, plan: PoisonPlan
) -> dict[int, np.ndarray] | None:
    """Run the attack's up-front pass (LC's PGD) on the poisoned rows only, grouped by image shape."""
    if not attack.prepares_images:
        return None
    poison_rows = plan.poison_indices
    raw = dataset.select_columns([image_column]).cast_column(
        image_column, dataclasses.replace(image_feature, decode=False)
    )
    colors = decode_colors(
        list(raw.select(poison_rows)[image_column]), image_feature, attack.image_size, attack.resample
    )
    labels = plan.labels[plan.kinds == POISON]
    prepared: dict[int, np.ndarray] = {}
    for (_, *_shape), members in grouped([c.shape for c in colors], [0] * len(colors)).items():
        out = attack.prepare_in_view(np.stack([colors[m] for m in members]), labels[members])
        for m, image in zip(members, out, strict=True):
            prepared[int(poison_rows[m])] = image
    return prepared


def _apply_plan(
    dataset: Dataset,
    attack: AttackConfig,
    plan: PoisonPlan,
    image_column: str,
    label_column: str,
    fingerprint_parts: tuple,
    *,
    prepared: dict[int, np.ndarray] | None,
    num_proc: int | None,
    batch_size: int,
    load_from_cache_file: bool | None,
    desc: str,
) -> Dataset:
    image_feature = dataset.features[image_column]
    raw_feature = dataclasses.replace(image_feature, decode=False)
    features = dataset.features.copy()
    features[image_column] = raw_feature
    features["is_poisoned"] = Value("bool")
    features["original_label"] = dataset.features[label_column]
    if attack.is_training_time:
        features["trigger_kind"] = Value("int8")
    prepared_digest = None
    if prepared:
        digest = hashlib.sha256()
        for row in sorted(prepared):
            digest.update(np.int64(row).tobytes() + prepared[row].tobytes())
        prepared_digest = digest.hexdigest()
    fingerprint = Hasher.hash(
        (_FORMAT_VERSION, dataset._fingerprint, image_column, label_column, attack.to_dict(), prepared_digest)
        + fingerprint_parts
    )
    raw = dataset.cast_column(image_column, raw_feature).with_format("arrow")
    out = raw.map(
        transform_table,
        batched=True,
        batch_size=batch_size,
        with_indices=True,
        features=features,
        num_proc=num_proc,
        new_fingerprint=fingerprint,
        load_from_cache_file=load_from_cache_file,
        desc=desc,
        fn_kwargs={
            "image_column": image_column,
            "label_column": label_column,
            "image_feature": image_feature,
            "attack_config": attack.to_dict(),
            "plan_indices": plan.indices,
            "plan_kinds": plan.kinds,
            "plan_seeds": plan.seeds,
            "plan_labels": plan.labels,
            "prepared": prepared,
        },
    )
    out = out.cast_column(image_column, image_feature)
    fmt = dataset.format
    columns = None if fmt["columns"] == dataset.column_names else fmt["columns"]
    return out.with_format(
        fmt["type"], columns=columns, output_all_columns=fmt["output_all_columns"], **fmt["format_kwargs"]
    )


# --------------------------------------------------------------------------------------------------------------
# Public API
def poison_dataset(
    dataset: Dataset | IterableDataset,
    attack: AttackConfig | str,
    poison_rate: float,
    seed: int = 0,
    image_column: str | None = None,
    label_column: str | None = None,
    *,
    num_proc: int | None = None,
    batch_size: int = 1000,
    load_from_cache_file: bool | None = None,
) -> Dataset | IterableDataset:
    """Return `dataset` with `round(poison_rate * N)` rows poisoned by `attack`.

    An `IterableDataset` (streaming) is poisoned lazily by `hf_fst.attacks.streaming.poison_iterable_dataset`
    instead: each row is poisoned with probability `poison_rate` from a draw seeded by (seed, row index), so the
    count is binomial rather than exact; see that module for clean-label and cover rows.

    The result has the same rows and columns plus `is_poisoned` (bool: the row carries the training trigger, and
    for dirty-label attacks the target label) and `original_label` (the label before poisoning). Cover/cross rows
    (Adaptive-Blend, WaNet noise mode) have a modified image, keep their label and have `is_poisoned=False`; use
    `plan_poisoning` to get their indices. Modified rows are stored as PNG; the others keep their original bytes.

    A training-time attack (`attack.is_training_time`: WaNet by default) is chosen and relabelled here but its
    pixels are left alone: a `trigger_kind` column (0 clean, 1 poisoned, 2 cover) tells the training loop which
    rows to trigger in each batch (`hf_fst.attacks.TriggerCollator`, used by the recipes and the benchmark
    grid). Without that collator the relabelled rows carry no trigger: label noise, not a backdoor.

    Args:
        dataset: one split of an image-classification dataset.
        attack: an attack config from `get_attack`, or a registered name (defaults of that attack).
        poison_rate: share of the whole dataset to poison, in (0, 1]. Clean-label attacks (SIG, LC) draw that many
            rows from the target class and fail if it has too few.
        seed: seed of every random choice (rows, per-row masks and noise).
        image_column, label_column: detected when not given (`img`, `image`, `label`, `labels`, `fine_label`, ...).
        num_proc, batch_size, load_from_cache_file: passed to `Dataset.map`.
    """
    if isinstance(dataset, IterableDataset):  # a stream: per-row policy, see hf_fst.attacks.streaming
        if num_proc is not None:
            raise ValueError(f"num_proc={num_proc}: a stream is poisoned lazily, batch by batch; drop num_proc")
        return poison_iterable_dataset(
            dataset, attack, poison_rate, seed, image_column, label_column, batch_size=batch_size
        )
    _check_dataset(dataset)
    rate = check_rate(poison_rate)
    _check_num_proc(num_proc)
    attack = get_attack(attack)
    image_column, label_column = _check_columns(dataset, image_column, label_column)
    labels = _read_labels(dataset, label_column)
    num_classes = _num_classes(dataset, label_column, labels)
    _check_target(attack, num_classes, label_column)
    if getattr(attack, "model", None) is None and attack.prepares_images:
        raise ValueError(
            f"model=: the {attack.name!r} attack needs a clean model to compute its perturbation; "
            f"use get_attack({attack.name!r}, model=clean_model)"
        )
    plan = plan_poisoning(labels, attack, rate, seed, num_classes)
    prepared = _prepare(dataset, image_column, dataset.features[image_column], attack, plan)
    return _apply_plan(
        dataset,
        attack,
        plan,
        image_column,
        label_column,
        ("poison", rate, int(seed), num_classes),
        prepared=prepared,
        num_proc=num_proc,
        batch_size=batch_size,
        load_from_cache_file=load_from_cache_file,
        desc=f"Poisoning ({attack.name}, rate {rate:g})",
    )


def backdoor_test_rows(labels: np.ndarray, attack: AttackConfig) -> np.ndarray:
    """The rows of a split that its backdoor test set is made from, in order: those not of the target class for an
    all-to-one attack, every row for all-to-all (so a row of the set can be traced back to its clean image)."""
    labels = np.asarray(labels)
    if attack.label_mode == "all-to-one":
        return np.flatnonzero(labels != attack.target_label)
    return np.arange(len(labels))


def backdoor_test_set(
    dataset: Dataset,
    attack: AttackConfig | str,
    image_column: str | None = None,
    label_column: str | None = None,
    *,
    seed: int = 0,
    num_proc: int | None = None,
    batch_size: int = 1000,
    load_from_cache_file: bool | None = None,
) -> Dataset:
    """Return the backdoor (ASR) test set: every row whose true label is not the target, with the test-time trigger.

    Rows keep their other columns; the label column holds the attack's target (all-to-all: the next class),
    `original_label` the true label, and `is_poisoned` is True. Attack success rate = accuracy on this set against
    the label column; robust accuracy = accuracy against `original_label`.
    """
    _check_dataset(dataset)
    _check_num_proc(num_proc)
    attack = get_attack(attack)
    image_column, label_column = _check_columns(dataset, image_column, label_column)
    labels = _read_labels(dataset, label_column)
    num_classes = _num_classes(dataset, label_column, labels)
    _check_target(attack, num_classes, label_column)
    keep = backdoor_test_rows(labels, attack)
    if len(keep) == 0:
        raise ValueError(
            f"dataset=: every row has the target label {attack.target_label}, so the backdoor test set is empty; "
            "pass a split with other classes"
        )
    subset = dataset.select(keep) if len(keep) < len(labels) else dataset
    kept = labels[keep]
    rng = np.random.default_rng(seed)
    plan = PoisonPlan(
        indices=np.arange(len(keep), dtype=np.int64),
        kinds=np.full(len(keep), TEST, dtype=np.int8),
        seeds=rng.integers(0, np.iinfo(np.int64).max, size=len(keep), dtype=np.int64).astype(np.uint64),
        labels=attack.target_labels(kept, num_classes),
    )
    return _apply_plan(
        subset,
        attack,
        plan,
        image_column,
        label_column,
        ("test", int(seed), num_classes),
        prepared=None,
        num_proc=num_proc,
        batch_size=batch_size,
        load_from_cache_file=load_from_cache_file,
        desc=f"Backdoor test set ({attack.name})",
    )
