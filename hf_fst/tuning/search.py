"""`fst_alpha="auto"`: the strongest feature shift that a clean-accuracy budget allows, with no attack knowledge.

A defender who does not know the trigger cannot measure ASR, so cannot pick alpha by it. What they can say is how
much clean accuracy they will pay. The search holds out a seeded, label-stratified part of the clean tuning data,
tunes on the rest with candidate strengths, and keeps the strongest whose held-out accuracy stays within
`max_accuracy_drop` of the input model's. The trainer then tunes on all the tuning data with that strength.

Each candidate is tuned for as many optimizer steps as the final run will take (same learning-rate schedule), not
for as many epochs: on a smaller part, equal epochs would mean fewer steps (of the penalty, too) than the run the
candidate stands for. With several folds (`fst_validation_folds`; unset, as many as hold out 200 images) every
candidate is tuned once per fold, each fold holding out a different, disjoint part, and judged on all of them
pooled: a small tuning set then gives an estimate from many more images, at that many times the cost.

Strengths are normalised (alpha x ||W0||^2, see `FSTConfig.normalize_fst_alpha`), so one ladder suits every
model. The ladder is searched by bisection, assuming that accuracy falls as the shift grows: 7 candidates cost 3
tuning runs (of the final run's length) per fold, so with one fold the whole of `auto` costs about 4 plain FST runs.
"""

from __future__ import annotations

import copy
import logging
import math
import random
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from transformers import PrinterCallback, set_seed
from transformers.trainer_utils import IntervalStrategy, SaveStrategy

if TYPE_CHECKING:
    from hf_fst.tuning.trainer import FSTTrainer

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_STRENGTHS",
    "MIN_VALIDATION_IMAGES",
    "StrengthSearch",
    "automatic_folds",
    "bisect_strengths",
    "dataset_labels",
    "describe_search",
    "planned_steps",
    "search_fst_alpha",
    "strength_record",
    "stratified_folds",
    "stratified_split",
    "without_augmentation",
]

DEFAULT_STRENGTHS: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
"""Normalised strengths tried by `auto`. The paper's CIFAR-10 alpha 0.2 on a head with ||W0||^2 = 27 is 5.4."""

MIN_VALIDATION_IMAGES = 200
"""Unset `fst_validation_folds` takes as few folds as judge each candidate on at least this many images: on fewer,
one image is over half a point, and a 2-point budget is a handful of images."""


@dataclass
class StrengthSearch:
    """What `auto` tried and chose; written to all_results.json (`fst_alpha_search`) and the model card."""

    max_accuracy_drop: float
    validation_size: int
    baseline_accuracy: float
    head_norm_squared: float
    tries: list[dict[str, Any]] = field(default_factory=list)
    chosen: float = 0.0
    """The chosen normalised strength."""
    budget_met: bool = False
    folds: int = 1
    """How many disjoint held-out parts each candidate was judged on (`validation_size` counts them all)."""
    steps: int = 0
    """Optimizer steps each candidate was tuned for: those of the final run."""
    held_out_augmented: bool = True
    """Whether the held-out images passed through the training pipeline as it is (with any augmentation it applies):
    neither its transform nor its collator offered `without_augmentation()`."""

    @property
    def chosen_alpha(self) -> float:
        """The chosen strength in the paper's units (raw alpha)."""
        return self.chosen / self.head_norm_squared

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "chosen_alpha": self.chosen_alpha}


def stratified_folds(
    labels: np.ndarray, fraction: float, seed: int, folds: int = 1
) -> list[tuple[np.ndarray, np.ndarray]]:
    """`folds` (tuning indices, held-out indices) pairs whose held-out parts are disjoint, stratified by label.

    Each held-out part takes `fraction` of every class (at least one image of a class of 2+, never its last one),
    so `folds` x `fraction` must not exceed 1; a class too small for every fold leaves the later folds without it.
    A class with a single image always stays in the tuning part. Deterministic in `seed`; every part sorted.
    """
    if folds < 1 or folds * fraction > 1 + 1e-9:
        raise ValueError(f"folds={folds} with fraction={fraction} do not fit: need 1 <= folds <= 1 / fraction")
    rng = np.random.default_rng(seed)
    held: list[list[np.ndarray]] = [[] for _ in range(folds)]
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        if len(members) < 2:
            continue
        count = min(len(members) - 1, max(1, int(round(fraction * len(members)))))
        order = rng.permutation(members)
        for fold in range(folds):
            held[fold].append(order[fold * count : (fold + 1) * count])
    pairs = []
    for parts in held:
        held_out = np.sort(np.concatenate(parts)) if parts else np.array([], dtype=np.int64)
        pairs.append((np.setdiff1d(np.arange(len(labels)), held_out), held_out))
    return pairs


def automatic_folds(labels: np.ndarray, fraction: float, seed: int) -> int:
    """Folds for an unset `fst_validation_folds`: as few as hold out `MIN_VALIDATION_IMAGES` in all at the nominal
    `fraction` of the data (so 1,000 images always give one fold, whatever the per-class rounding), at most
    1 / fraction, and never one that would hold out nothing (a tiny set runs out of images of a class)."""
    parts = [len(held) for _, held in stratified_folds(labels, fraction, seed, max(1, int(1 / fraction + 1e-9)))]
    usable = max(1, sum(1 for size in parts if size > 0))
    wanted = math.ceil(MIN_VALIDATION_IMAGES / max(fraction * len(labels), 1e-9) - 1e-9)
    return max(1, min(usable, wanted))


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(tuning indices, held-out indices): the first of `stratified_folds`, i.e. one held-out part."""
    return stratified_folds(labels, fraction, seed)[0]


def dataset_labels(dataset: Any, label_key: str) -> np.ndarray:
    """The label of every row, read from the raw label column of a `datasets.Dataset` (no image decoding)."""
    if hasattr(dataset, "column_names") and hasattr(dataset, "with_format"):
        from hf_fst.columns import resolve_columns

        raw = dataset.with_format(None)
        name = label_key if label_key in raw.column_names else resolve_columns(raw)[1]
        return np.asarray(list(raw[name]))
    return np.asarray([int(dataset[i][label_key]) for i in range(len(dataset))])


def _subset(dataset: Any, indices: np.ndarray) -> Any:
    if hasattr(dataset, "select"):
        return dataset.select(indices.tolist())
    return torch.utils.data.Subset(dataset, indices.tolist())


def _quiet_args(trainer: FSTTrainer, **changes: Any):
    """The trainer's arguments for an inner run: nothing saved, logged, evaluated or pushed."""
    args = copy.copy(trainer.args)
    args.output_dir = tempfile.mkdtemp(prefix="fst-alpha-search-")
    args.save_strategy = SaveStrategy.NO
    args.eval_strategy = IntervalStrategy.NO
    args.logging_strategy = IntervalStrategy.NO
    args.load_best_model_at_end = False
    args.push_to_hub = False
    args.report_to = []
    args.resume_from_checkpoint = None
    for key, value in changes.items():
        setattr(args, key, value)
    return args


def evaluation_view(dataset: Any) -> tuple[Any, bool]:
    """(the held-out part as a test split is seen, whether training augmentation was switched off in its transform).

    The tuning data carries the training transform. When that transform has a `without_augmentation()` method
    (hf-fst's `ImageClassificationTransform` has), the held-out part is judged through the copy it returns, as
    test images are; other transforms are kept, and `_correct` then gives every model the same random draws.
    """
    fmt = getattr(dataset, "format", None) or {}
    transform = fmt.get("format_kwargs", {}).get("transform") if fmt.get("type") == "custom" else None
    plain, switched = without_augmentation(transform)
    if not switched:
        return dataset, False
    columns, everything = fmt.get("columns"), bool(fmt.get("output_all_columns", False))
    return dataset.with_transform(plain, columns=columns, output_all_columns=everything), True


def without_augmentation(step: Any) -> tuple[Any, bool]:
    """(`step.without_augmentation()`, True) for a transform or collator that offers it, else (`step`, False)."""
    switch = getattr(step, "without_augmentation", None)
    return (switch(), True) if callable(switch) else (step, False)


def _correct(trainer: FSTTrainer, dataset: Any, seed: int) -> int:
    """How many images of `dataset` the trainer's model classifies correctly.

    Random augmentation, if any, is drawn from `seed` (the global RNGs are restored afterwards), so the input model
    and every candidate are judged on the same views.
    """
    states = random.getstate(), np.random.get_state()
    with torch.random.fork_rng():
        set_seed(seed)
        try:
            output = trainer.predict(dataset)
        finally:
            random.setstate(states[0])
            np.random.set_state(states[1])
    logits = output.predictions[0] if isinstance(output.predictions, tuple) else output.predictions
    labels = output.label_ids[0] if isinstance(output.label_ids, tuple) else output.label_ids
    return int(np.sum(np.asarray(logits).argmax(-1) == np.asarray(labels)))


def planned_steps(trainer: FSTTrainer) -> int:
    """The number of optimizer steps `trainer.train()` will take, counted by the Trainer's own rule (which returns
    `max_steps` itself when it is set)."""
    return int(trainer.set_initial_training_values(trainer.args, trainer.get_train_dataloader())[-1])


def search_fst_alpha(
    trainer: FSTTrainer, baseline: torch.nn.Module, strengths: tuple[float, ...] = DEFAULT_STRENGTHS
) -> StrengthSearch:
    """Bisect `strengths` (ascending) for the strongest whose held-out accuracy is within the budget.

    `baseline` is the input model (its original head); `trainer` supplies the data, collator, loss and
    arguments. When no candidate meets the budget, the weakest tried is kept and `budget_met` is False.
    """
    trainer_class = type(trainer)  # a subclass's penalty or head lookup applies to the candidates too
    args = trainer.args
    labels = dataset_labels(trainer.train_dataset, trainer.label_key)
    count = args.fst_validation_folds or automatic_folds(labels, args.fst_validation_fraction, args.seed)
    folds = stratified_folds(labels, args.fst_validation_fraction, args.seed, count)
    if any(len(held) == 0 or len(keep) == 0 for keep, held in folds):
        raise ValueError(
            f"fst_alpha='auto' needs tuning data to hold out, but {len(labels)} image(s) leave no held-out part at "
            f"fst_validation_fraction={args.fst_validation_fraction} with fst_validation_folds="
            f"{args.fst_validation_folds}; pass more tuning data, fewer folds, or a number for fst_alpha"
        )
    plain_view, plain_transform = evaluation_view(trainer.train_dataset)
    plain_collator, plain_batches = without_augmentation(trainer.data_collator)
    parts = [(_subset(trainer.train_dataset, keep), _subset(plain_view, held)) for keep, held in folds]
    validation_size = sum(len(held) for _, held in folds)
    steps = planned_steps(trainer)
    common = {"data_collator": trainer.data_collator, "compute_loss_func": trainer.compute_loss_func}
    reference_args = _quiet_args(trainer, tuning_mode="ft")
    reference = trainer_class(model=baseline, args=reference_args, **{**common, "data_collator": plain_collator})
    w0_norm_squared = float(trainer.fst_w0.double().pow(2).sum())
    search = StrengthSearch(
        max_accuracy_drop=args.max_accuracy_drop,
        validation_size=validation_size,
        baseline_accuracy=sum(_correct(reference, held, args.seed) for _, held in parts) / validation_size,
        head_norm_squared=w0_norm_squared,
        folds=len(folds),
        steps=steps,
        held_out_augmented=not (plain_transform or plain_batches),
    )
    del reference
    floor = search.baseline_accuracy - args.max_accuracy_drop

    def held_out_accuracy(strength: float) -> float:
        inner_args = _quiet_args(
            trainer, fst_alpha=strength, normalize_fst_alpha=True, tuning_mode="fst", max_steps=steps
        )
        correct = 0
        for tuning_part, held_part in parts:
            inner = trainer_class(model=baseline, args=inner_args, train_dataset=tuning_part, **common)
            inner.remove_callback(PrinterCallback)
            inner.train()
            inner.data_collator = plain_collator  # trained with the training pipeline, judged without augmentation
            correct += _correct(inner, held_part, args.seed)
        accuracy = correct / validation_size
        logger.info("fst_alpha=auto: strength %g -> held-out accuracy %.4f (floor %.4f)", strength, accuracy, floor)
        return accuracy

    tries, chosen = bisect_strengths(strengths, held_out_accuracy, floor)
    search.tries = [{**t, "fst_alpha": t["fst_alpha_normalized"] / w0_norm_squared} for t in tries]
    search.budget_met = chosen is not None
    search.chosen = chosen if chosen is not None else min(t["fst_alpha_normalized"] for t in tries)
    if not search.budget_met:
        weakest = min(search.tries, key=lambda t: t["fst_alpha_normalized"])
        logger.warning(
            "fst_alpha=auto: no strength kept held-out accuracy within %g points of the input model's (the weakest, "
            "%g, lost %.1f); tuning with it anyway: expect a larger drop, or give more clean data or a larger budget",
            100 * args.max_accuracy_drop,
            search.chosen,
            100 * (search.baseline_accuracy - weakest["validation_accuracy"]),
        )
    return search


def bisect_strengths(
    strengths: tuple[float, ...], accuracy_of: Callable[[float], float], floor: float
) -> tuple[list[dict[str, Any]], float | None]:
    """(tries, strongest strength found with accuracy >= floor, or None), by bisection over ascending `strengths`.

    Assumes accuracy falls as strength grows; with 2**k - 1 strengths it always costs k evaluations.
    """
    if not strengths or any(b <= a for a, b in zip(strengths, strengths[1:], strict=False)) or strengths[0] <= 0:
        raise ValueError(f"strengths={strengths!r} must be positive and strictly ascending")
    low, high, best, tries = 0, len(strengths) - 1, None, []
    while low <= high:
        middle = (low + high) // 2
        accuracy = float(accuracy_of(float(strengths[middle])))
        within = accuracy >= floor - 1e-12
        tries.append({"fst_alpha_normalized": float(strengths[middle]), "validation_accuracy": accuracy,
                      "within_budget": within})  # fmt: skip
        if within:
            best, low = middle, middle + 1
        else:
            high = middle - 1
    return tries, None if best is None else float(strengths[best])


def strength_record(trainer: FSTTrainer) -> dict[str, Any]:
    """The strength a run used, for all_results.json and grid records: paper units, scale-free, and the search."""
    if trainer.args.tuning_mode != "fst":
        return {"fst_alpha": None, "fst_alpha_normalized": None, "fst_alpha_search": None}
    search = trainer.fst_alpha_search
    return {
        "fst_alpha": trainer.fst_alpha_raw,
        "fst_alpha_normalized": trainer.fst_alpha_normalized,
        "fst_alpha_search": None if search is None else search.to_dict(),
    }


def describe_search(search: dict[str, Any]) -> str:
    """One Markdown paragraph for a model card: how `auto` chose alpha, and what it tried."""
    tried = ", ".join(
        f"{t['fst_alpha_normalized']:g} ({100 * t['validation_accuracy']:.1f}%{'' if t['within_budget'] else ', over'})"
        for t in search["tries"]
    )
    folds = search.get("folds", 1)
    where = f"{search['validation_size']} held-out clean tuning images"
    if folds > 1:
        where += f" ({folds} disjoint parts, each candidate tuned once per part)"
    if search.get("held_out_augmented", False):
        where += ", seen through the training pipeline with any augmentation it applies,"
    text = (
        f"alpha was chosen without attack knowledge (`fst_alpha=auto`): the strongest normalised shift whose accuracy "
        f"on {where} stayed within "
        f"{100 * search['max_accuracy_drop']:g} points of the input model's ({100 * search['baseline_accuracy']:.1f}%). "
        f"Tried (strength alpha x ||W0||^2, held-out accuracy): {tried}. "
    )
    if search["budget_met"]:
        return text + f"Chosen: {search['chosen']:g}, alpha = {search['chosen_alpha']:.4g}; then tuned on all images."
    return text + (
        f"No strength met the budget, so the weakest tried ({search['chosen']:g}) was kept: expect a larger drop, "
        "and consider more clean tuning data or a larger budget."
    )
