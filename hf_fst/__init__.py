"""hf-fst: remove backdoors from Hugging Face image classifiers with Feature Shift Tuning.

Public names are imported lazily so that `import hf_fst` stays cheap and a script that only
poisons data never pays for importing the Trainer stack.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY: dict[str, str] = {
    "FSTConfig": "hf_fst.tuning",
    "FSTTrainer": "hf_fst.tuning",
    "TUNING_MODES": "hf_fst.tuning",
    "find_linear_head": "hf_fst.heads",
    "get_attack": "hf_fst.attacks",
    "list_attacks": "hf_fst.attacks",
    "poison_dataset": "hf_fst.attacks",
    "backdoor_test_set": "hf_fst.attacks",
    "clean_accuracy": "hf_fst.metrics",
    "attack_success_rate": "hf_fst.metrics",
    "robust_accuracy": "hf_fst.metrics",
    "evaluate_backdoor": "hf_fst.metrics",
    "compute_backdoor_metrics": "hf_fst.metrics",
    "load_classifier": "hf_fst.loading",
    "load_image_dataset": "hf_fst.loading",
    "build_transform": "hf_fst.transforms",
    "augmentation_epoch_callback": "hf_fst.transforms",
    "collate_image_batch": "hf_fst.transforms",
    "select_tuning_set": "hf_fst.selection",
}

__all__ = sorted(_LAZY) + ["__version__"]

# The field's CIFAR architectures must be known to AutoConfig / AutoModelForImageClassification as soon as hf_fst is
# imported, so that a folder holding one loads with the Auto classes.
from hf_fst import models as _models  # noqa: E402, F401

if TYPE_CHECKING:  # pragma: no cover
    from hf_fst.attacks import backdoor_test_set, get_attack, list_attacks, poison_dataset  # noqa: F401
    from hf_fst.heads import find_linear_head  # noqa: F401
    from hf_fst.loading import load_classifier, load_image_dataset  # noqa: F401
    from hf_fst.metrics import (  # noqa: F401
        attack_success_rate,
        clean_accuracy,
        compute_backdoor_metrics,
        evaluate_backdoor,
        robust_accuracy,
    )
    from hf_fst.selection import select_tuning_set  # noqa: F401
    from hf_fst.transforms import augmentation_epoch_callback, build_transform, collate_image_batch  # noqa: F401
    from hf_fst.tuning import TUNING_MODES, FSTConfig, FSTTrainer  # noqa: F401


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hf_fst' has no attribute {name!r}")
