"""`fst_alpha="auto"`: the strongest feature shift that a clean-accuracy budget allows, with no attack knowledge.

A defender who does not know the trigger cannot measure ASR, so cannot pick alpha by it. What they can say is how
much clean accuracy they will pay. The search holds out a seeded, label-stratified part of the clean tuning data,
tunes on the rest with candidate strengths, and keeps the strongest whose held-out accuracy stays within
`max_accuracy_drop` of the input model's. The trainer then tunes on all the tuning data with that strength.

Strengths are normalised (alpha x ||W0||^2, see `FSTConfig.normalize_fst_alpha`), so one ladder suits every
model. The ladder is searched by bisection, assuming that accuracy falls as the shift grows: 7 candidates cost 3
tuning runs on 1 - `fst_validation_fraction` of the data, so the whole of `auto` costs about 3.4 plain FST runs.
"""

from __future__ import annotations

import copy
import logging
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from transformers import PrinterCallback
from transformers.trainer_utils import IntervalStrategy, SaveStrategy

if TYPE_CHECKING:
    from hf_fst.tuning.trainer import FSTTrainer

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_STRENGTHS",
    "StrengthSearch",
    "bisect_strengths",
    "dataset_labels",
    "describe_search",
    "search_fst_alpha",
    "strength_record",
    "stratified_split",
]

DEFAULT_STRENGTHS: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
"""Normalised strengths tried by `auto`. The paper's CIFAR-10 alpha 0.2 on a head with ||W0||^2 = 27 is 5.4."""


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

    @property
    def chosen_alpha(self) -> float:
        """The chosen strength in the paper's units (raw alpha)."""
        return self.chosen / self.head_norm_squared

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "chosen_alpha": self.chosen_alpha}


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(tuning indices, held-out indices): `fraction` of each class held out, at least one of a class of 2+.

    A class with a single image stays in the tuning part. Deterministic in `seed`; both parts sorted.
    """
    rng = np.random.default_rng(seed)
    held = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        if len(members) < 2:
            continue
        count = min(len(members) - 1, max(1, int(round(fraction * len(members)))))
        held.append(rng.permutation(members)[:count])
    held_out = np.sort(np.concatenate(held)) if held else np.array([], dtype=np.int64)
    keep = np.setdiff1d(np.arange(len(labels)), held_out)
    return keep, held_out


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


def _accuracy(trainer: FSTTrainer, dataset: Any) -> float:
    output = trainer.predict(dataset)
    logits = output.predictions[0] if isinstance(output.predictions, tuple) else output.predictions
    labels = output.label_ids[0] if isinstance(output.label_ids, tuple) else output.label_ids
    return float(np.mean(np.asarray(logits).argmax(-1) == np.asarray(labels)))


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
    keep, held_out = stratified_split(labels, args.fst_validation_fraction, args.seed)
    if len(held_out) == 0 or len(keep) == 0:
        raise ValueError(
            f"fst_alpha='auto' needs tuning data to hold out, but {len(labels)} image(s) leave no held-out part at "
            f"fst_validation_fraction={args.fst_validation_fraction}; pass more tuning data or a number for fst_alpha"
        )
    tuning_part, held_part = _subset(trainer.train_dataset, keep), _subset(trainer.train_dataset, held_out)
    common = {"data_collator": trainer.data_collator, "compute_loss_func": trainer.compute_loss_func}
    reference = trainer_class(model=baseline, args=_quiet_args(trainer, tuning_mode="ft"), **common)
    w0_norm_squared = float(trainer.fst_w0.double().pow(2).sum())
    search = StrengthSearch(
        max_accuracy_drop=args.max_accuracy_drop,
        validation_size=len(held_out),
        baseline_accuracy=_accuracy(reference, held_part),
        head_norm_squared=w0_norm_squared,
    )
    del reference
    floor = search.baseline_accuracy - args.max_accuracy_drop

    def held_out_accuracy(strength: float) -> float:
        inner_args = _quiet_args(trainer, fst_alpha=strength, normalize_fst_alpha=True, tuning_mode="fst")
        inner = trainer_class(model=baseline, args=inner_args, train_dataset=tuning_part, **common)
        inner.remove_callback(PrinterCallback)
        inner.train()
        accuracy = _accuracy(inner, held_part)
        logger.info("fst_alpha=auto: strength %g -> held-out accuracy %.4f (floor %.4f)", strength, accuracy, floor)
        return accuracy

    tries, chosen = bisect_strengths(strengths, held_out_accuracy, floor)
    search.tries = [{**t, "fst_alpha": t["fst_alpha_normalized"] / w0_norm_squared} for t in tries]
    search.budget_met = chosen is not None
    search.chosen = chosen if chosen is not None else min(t["fst_alpha_normalized"] for t in tries)
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
    text = (
        f"alpha was chosen without attack knowledge (`fst_alpha=auto`): the strongest normalised shift whose accuracy "
        f"on {search['validation_size']} held-out clean tuning images stayed within "
        f"{100 * search['max_accuracy_drop']:g} points of the input model's ({100 * search['baseline_accuracy']:.1f}%). "
        f"Tried (strength alpha x ||W0||^2, held-out accuracy): {tried}. "
    )
    if search["budget_met"]:
        return text + f"Chosen: {search['chosen']:g}, alpha = {search['chosen_alpha']:.4g}; then tuned on all images."
    return text + (
        f"No strength met the budget, so the weakest tried ({search['chosen']:g}) was kept: expect a larger drop, "
        "and consider more clean tuning data or a larger budget."
    )
