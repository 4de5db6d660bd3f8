"""The data sets the benchmark knows: Hub ids, input size, the paper's tuning settings, and where to read them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["DATASETS", "dataset_source"]

# Hub id, input side, the paper's settings per data set (tuning epochs and FST alpha: CIFAR-10 10 / 0.2, GTSRB
# 15 / 0.1) and its augmentation (crop and flip on CIFAR-10; crop only on GTSRB, whose signs are not symmetric).
# GTSRB images vary in size on the Hub; the benchmark resizes them to 32x32 as the paper does.
DATASETS: dict[str, dict[str, Any]] = {
    "cifar10": {"hub_id": "uoft-cs/cifar10", "image_size": 32, "tuning_epochs": 10, "fst_alpha": 0.2, "flip": True},
    "gtsrb": {"hub_id": "tanganke/gtsrb", "image_size": 32, "tuning_epochs": 15, "fst_alpha": 0.1, "flip": False},
}


def dataset_source(name: str, data_dir: str | None) -> str:
    """Where data set `name` is read from: its Hub id, or with `data_dir` the folder `<data_dir>/<name>[-suffix]`.

    A suffix lets one folder hold variants such as `cifar10-jpeg`; exactly one folder must match.
    """
    if data_dir is None:
        return DATASETS[name]["hub_id"]
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise ValueError(f"--data_dir={data_dir!r} is not a folder; pass a folder holding {name}/ (or drop it)")
    found = [folder for folder in [root / name, *sorted(root.glob(f"{name}-*"))] if folder.is_dir()]
    if len(found) != 1:
        what = "no folder" if not found else f"{len(found)} folders ({', '.join(f.name for f in found)})"
        raise ValueError(
            f"--data_dir={data_dir!r}: {what} named {name} or {name}-*; keep exactly one, or drop --data_dir to load "
            f"{DATASETS[name]['hub_id']} from the Hub"
        )
    return str(found[0])
