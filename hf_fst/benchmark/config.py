"""The grid's settings: which data sets, attacks, rates, seeds and tuning modes, and how models are trained."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any

from hf_fst.attacks import get_attack
from hf_fst.benchmark.architectures import MODELS
from hf_fst.benchmark.sources import DATASETS
from hf_fst.tuning import TUNING_MODES
from hf_fst.tuning.config import parse_fst_alpha

__all__ = ["STRONG_BASE_EPOCHS", "GridConfig", "add_strong_cell_arguments", "strong_grid_config"]

# Epochs of each data set's kept clean base in the strong-model grid (BENCHMARKS.md, "Strong-model CPU grid").
STRONG_BASE_EPOCHS = {"cifar10": 30, "gtsrb": 20}


@dataclass
class GridConfig:
    """What to run. Unset `tuning_epochs` / `fst_alpha` take the paper's value for each data set."""

    datasets: list[str] = field(default_factory=lambda: ["cifar10"])
    attacks: list[str] = field(default_factory=lambda: ["badnet", "blended", "sig", "wanet"])
    poison_rates: list[float] = field(default_factory=lambda: [0.01, 0.005])
    tuning_modes: list[str] = field(default_factory=lambda: list(TUNING_MODES))
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    model: str = "resnet-s"
    data_dir: str | None = field(
        default=None,
        metadata={"help": "Read data sets from <data_dir>/<name> (or <name>-*) instead of their Hub ids."},
    )
    num_train_images: int | None = None
    num_test_images: int | None = None
    backdoor_epochs: int = 20
    backdoor_learning_rate: float = 0.05
    backdoor_batch_size: int = 128
    backdoor_augment: bool = False
    tuning_augment: bool | None = field(
        default=None,
        metadata={"help": "Augment the tuning runs; default: as the backdoored model was trained (backdoor_augment)."},
    )
    base_epochs: int | None = field(
        default=None,
        metadata={
            "help": "Second threat model: train one clean base model per data set for this many epochs, then implant "
            "each backdoor by fine-tuning it for backdoor_epochs at backdoor_learning_rate. Default: from scratch."
        },
    )
    base_learning_rate: float = 0.05
    base_seed: int = 0
    tuning_ratio: float = 0.02
    num_tuning_samples: int | None = None
    tuning_epochs: int | None = None
    tuning_learning_rate: float = 0.01
    fst_alpha: float | str | None = field(
        default=None,
        metadata={"help": "FST alpha, or 'auto' to choose it within max_accuracy_drop; default: the paper's value."},
    )
    normalize_fst_alpha: bool = field(
        default=False, metadata={"help": "Read fst_alpha as a scale-free strength (alpha x ||W0||^2)."}
    )
    max_accuracy_drop: float = field(default=0.02, metadata={"help": "With fst_alpha auto: the accuracy budget."})
    fst_validation_folds: int | None = field(
        default=None,
        metadata={"help": "With fst_alpha auto: held-out folds per candidate; unset: enough for 200 images."},
    )
    retuning_attack: bool = field(
        default=False,
        metadata={"help": "Also run the retuning attack on every tuned model and the backdoored one (P-ASR)."},
    )
    retuning_poisoned_samples: int = 5
    project_head_norm: bool | None = None
    results_file: str = "benchmarks/results.jsonl"
    cache_dir: str = "benchmarks/cache"
    kept_models_dir: str | None = field(
        default="benchmarks/models",
        metadata={
            "help": "Read-only folder of kept models (e.g. a committed clean base), looked up before cache_dir."
        },
    )
    disable_tqdm: bool = field(default=False, metadata={"help": "Hide the progress bars (poisoning, training, ...)."})

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ValueError(f"model: {self.model!r} is unknown; use one of {', '.join(MODELS)}")
        for name in self.datasets:
            if name not in DATASETS:
                raise ValueError(f"datasets: {name!r} is unknown; use one of {', '.join(DATASETS)}")
        for mode in self.tuning_modes:
            if mode not in TUNING_MODES:
                raise ValueError(f"tuning_modes: {mode!r} is unknown; use one of {', '.join(TUNING_MODES)}")
        for rate in self.poison_rates:
            if not 0 < rate <= 1:
                raise ValueError(f"poison_rates: {rate} is outside (0, 1]")
        for attack in self.attacks:
            get_attack(attack)  # fails early with the list of registered attacks
        if self.base_epochs is not None and self.base_epochs < 1:
            raise ValueError(f"base_epochs: {self.base_epochs} must be >= 1 (or unset to train from scratch)")
        if self.fst_alpha is not None:
            self.fst_alpha = parse_fst_alpha(self.fst_alpha)
        if not 0 < self.max_accuracy_drop < 1:
            raise ValueError(f"max_accuracy_drop: {self.max_accuracy_drop} must be a fraction in (0, 1), e.g. 0.02")
        folds = self.fst_validation_folds
        if folds is not None and (isinstance(folds, bool) or not isinstance(folds, int) or folds < 1):
            raise ValueError(f"fst_validation_folds: {folds!r} must be an integer >= 1 (or unset), e.g. 5")
        if self.tuning_augment is None:
            self.tuning_augment = self.backdoor_augment

    @property
    def base_training(self) -> dict[str, Any] | None:
        """How the clean base model was trained, or None when backdoored models are trained from scratch."""
        if self.base_epochs is None:
            return None
        return {"epochs": self.base_epochs, "learning_rate": self.base_learning_rate, "seed": self.base_seed}


def strong_grid_config(dataset: str, data_dir: str | None, cache_dir: str, **changes: Any) -> GridConfig:
    """The strong-model grid's settings for `dataset`, so that the studies built on its models (FST variants,
    tuning on unseen images) train and tune exactly as it did and find its cached models."""
    if dataset not in STRONG_BASE_EPOCHS:
        raise ValueError(f"dataset: {dataset!r} has no strong-grid base; use one of {', '.join(STRONG_BASE_EPOCHS)}")
    settings: dict[str, Any] = {
        "datasets": [dataset], "attacks": ["blended"], "model": "preact-resnet-18-w0.25", "data_dir": data_dir,
        "backdoor_augment": True, "base_epochs": STRONG_BASE_EPOCHS[dataset], "base_learning_rate": 0.05,
        "backdoor_epochs": 5, "backdoor_learning_rate": 0.02, "num_tuning_samples": 1000, "normalize_fst_alpha": True,
        "cache_dir": cache_dir, "disable_tqdm": True,
    }  # fmt: skip
    return GridConfig(**{**settings, **changes})


def add_strong_cell_arguments(parser: argparse.ArgumentParser, cache_dir: str) -> None:
    """The flags that pick strong-grid cells, shared by the studies run on its models."""
    parser.add_argument("--data_dir", default=None, help="Folder with cifar10-jpeg/, gtsrb-32/ (default: the Hub).")
    parser.add_argument("--dataset", default="cifar10", choices=sorted(STRONG_BASE_EPOCHS))
    parser.add_argument("--attacks", nargs="+", default=["blended", "sig", "lc"])
    parser.add_argument("--poison_rates", nargs="+", type=float, default=[0.01])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--cache_dir", default=cache_dir, help="The strong grid's cache of backdoored models.")
