"""Where the tests find the local copies of CIFAR-10 and GTSRB (Hub parquet layout), passed as a data-set path.

`HF_FST_DATA_DIR` points elsewhere. Without a CIFAR-10 copy (a fresh clone outside this project's set-up), the
tests that only need a few CIFAR-shaped images get a synthetic stand-in of the same layout from `cifar_table`:
32x32 JPEG images with CIFAR-10's columns and class names, whose class sets a colour and a stripe direction so that
small models can learn it.
"""

from __future__ import annotations

import functools
import io
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("HF_FST_DATA_DIR", REPO.parent / "shared" / "data"))
CIFAR = DATA_DIR / "cifar10-jpeg"
GTSRB = DATA_DIR / "gtsrb-32"

CIFAR10_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
SYNTHETIC_ROWS = {"train": 2000, "test": 1000}


@functools.cache
def cifar_table(split: str) -> pa.Table:
    """The `split` ("train" or "test") of the CIFAR-10 copy, or of its synthetic stand-in when there is none."""
    if CIFAR.exists():
        return pq.read_table(next((CIFAR / "data").glob(f"{split}-*.parquet")))
    return _synthetic_table(SYNTHETIC_ROWS[split], seed=0 if split == "train" else 1)


def _synthetic_table(count: int, seed: int) -> pa.Table:
    import datasets
    from PIL import Image

    rng = np.random.default_rng(seed)
    labels = np.sort(rng.integers(0, 10, size=count))  # sorted by label, as the real files are
    palette = rng.integers(40, 216, size=(10, 3))
    rows, cols = np.mgrid[0:32, 0:32]
    images = []
    for label in labels:
        stripes = np.sin((rows * np.cos(label * np.pi / 10) + cols * np.sin(label * np.pi / 10)) * 0.8)
        pixels = palette[label] + 30 * stripes[..., None] + rng.normal(0, 12, size=(32, 32, 3))
        buffer = io.BytesIO()
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, format="JPEG", quality=90)
        images.append({"bytes": buffer.getvalue(), "path": None})
    features = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=list(CIFAR10_NAMES))})
    return datasets.Dataset.from_dict({"img": images, "label": labels.tolist()}, features=features).data.table


def write_cifar_subset(root: Path, counts: dict[str, int], rng: np.random.Generator | None = None) -> Path:
    """A parquet folder `root/data/<split>-00000-of-00001.parquet` with `counts[split]` rows drawn by `rng`.

    One generator draws the splits in turn (pass a fresh one per split for independent draws).
    """
    rng = rng if rng is not None else np.random.default_rng(0)
    (root / "data").mkdir(parents=True, exist_ok=True)
    for split, count in counts.items():
        table = cifar_table(split)
        rows = np.sort(rng.choice(table.num_rows, size=count, replace=False))
        pq.write_table(table.take(rows), root / "data" / f"{split}-00000-of-00001.parquet")
    return root


def cifar_data_dir(tmp_root: Path) -> Path:
    """A `--data_dir` holding `cifar10-*`: the real one, or a folder with the synthetic stand-in written into it."""
    if CIFAR.exists():
        return DATA_DIR
    folder = tmp_root / "cifar10-synthetic" / "data"
    folder.mkdir(parents=True, exist_ok=True)
    for split in SYNTHETIC_ROWS:
        pq.write_table(cifar_table(split), folder / f"{split}-00000-of-00001.parquet")
    return tmp_root
