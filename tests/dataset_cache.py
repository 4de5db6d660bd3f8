"""Populate a Hugging Face cache with a Hub data set, the way one online `load_dataset("owner/name")` does.

`populate_dataset_cache` serves a local folder as a dataset repo from the fake Hub (tests/hub_server.py) and runs
the real `datasets.load_dataset(repo_id)` against it in a subprocess with `HF_HOME` set, so that both caches get
exactly what a real download writes:

- `$HF_HOME/hub/datasets--owner--name/{refs,snapshots,blobs}`: the repo files (huggingface_hub's cache);
- `$HF_HOME/datasets/owner___name/<config>/<version>/<commit>/`: the prepared Arrow tables (datasets' cache).

Offline (`HF_HUB_OFFLINE=1`) `load_dataset("owner/name")` reads only the second one: it cannot ask the Hub for the
repo, so it falls back to the newest prepared copy of the data set in `HF_DATASETS_CACHE` (`$HF_HOME/datasets`
unless that variable is set).

Subprocesses because huggingface_hub and datasets read `HF_ENDPOINT`, `HF_HOME` and `HF_HUB_OFFLINE` when they
are imported. `write_cifar10_like` builds a small source folder laid out like the Hub's `uoft-cs/cifar10` (random
images) and `subset_parquet_folder` cuts a local copy of a real one down to a few rows.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hub_server import FakeHub

CIFAR10_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
DEAD_ENDPOINT = "http://127.0.0.1:9"  # nothing listens there: any request the libraries make fails at once

# Variables that would send the libraries to another cache, another Hub or a real token.
_CLEARED = (
    "HF_DATASETS_CACHE",
    "HF_HUB_CACHE",
    "HUGGINGFACE_HUB_CACHE",
    "HF_XET_CACHE",
    "HF_ASSETS_CACHE",
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "HF_TOKEN_PATH",
    "HF_HUB_OFFLINE",
    "HF_DATASETS_OFFLINE",
    "TRANSFORMERS_OFFLINE",
)

_LOAD_SCRIPT = """
import json, sys
import datasets
name = sys.argv[2] or None
if sys.argv[3] == "hf_fst":
    from hf_fst.loading import load_image_dataset
    try:
        loaded = load_image_dataset(sys.argv[1], name)
    except ValueError as err:
        sys.exit(f"ValueError: {err}")
else:
    loaded = datasets.load_dataset(sys.argv[1], name)
print(json.dumps({
    split: {"rows": part.num_rows, "columns": part.column_names, "features": part.features.to_dict()}
    for split, part in loaded.items()
}))
"""


def hf_env(hf_home: Path, *, endpoint: str, offline: bool) -> dict[str, str]:
    """The environment of a subprocess that uses only `hf_home` as its Hugging Face cache and `endpoint` as Hub."""
    env = {key: value for key, value in os.environ.items() if key not in _CLEARED}
    env.update(
        HF_HOME=str(hf_home),
        HF_ENDPOINT=endpoint,
        HF_HUB_OFFLINE="1" if offline else "0",
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        HF_HUB_DISABLE_IMPLICIT_TOKEN="1",
        HF_DATASETS_DISABLE_PROGRESS_BARS="1",
    )
    return env


def load_in_subprocess(
    hf_home: Path,
    repo_id: str,
    *,
    config_name: str | None = None,
    endpoint: str = DEAD_ENDPOINT,
    offline: bool = True,
    timeout: float = 120,
    loader: str = "datasets",
) -> subprocess.CompletedProcess[str]:
    """Run `datasets.load_dataset(repo_id, config_name)` (or, with `loader="hf_fst"`, hf-fst's
    `load_image_dataset`) in a fresh interpreter; stdout is a JSON summary `{split: {"rows", "columns",
    "features"}}` when it worked (see `summary`)."""
    return subprocess.run(
        [sys.executable, "-c", _LOAD_SCRIPT, repo_id, config_name or "", loader],
        env=hf_env(hf_home, endpoint=endpoint, offline=offline),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def summary(done: subprocess.CompletedProcess[str]) -> dict[str, dict[str, Any]]:
    """The JSON summary printed by a successful `load_in_subprocess`; raises with its stderr otherwise."""
    if done.returncode != 0:
        raise RuntimeError(f"load_dataset failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def populate_dataset_cache(
    hf_home: Path,
    repo_id: str,
    source_folder: Path,
    *,
    hub: FakeHub | None = None,
    config_name: str | None = None,
    timeout: float = 120,
) -> None:
    """Fill `hf_home` as one online `load_dataset(repo_id)` would, with `source_folder` as the repo's content.

    The folder is served as dataset repo `repo_id` (its files as they are: README.md with YAML `configs`, parquet
    files under `data/` or a config folder, ...) by `hub`, or by a fake Hub started for the call. Afterwards
    `load_dataset(repo_id)` works with `HF_HUB_OFFLINE=1` and `HF_HOME=hf_home`, and nothing else in the
    environment (see `hf_env`). Raises RuntimeError with the subprocess' stderr when the online load fails.
    """
    if hub is None:
        with FakeHub() as own_hub:
            populate_dataset_cache(
                hf_home, repo_id, source_folder, hub=own_hub, config_name=config_name, timeout=timeout
            )
        return
    hub.add_dataset(repo_id, Path(source_folder))
    done = load_in_subprocess(
        hf_home, repo_id, config_name=config_name, endpoint=hub.url, offline=False, timeout=timeout
    )
    summary(done)


# -- source folders --------------------------------------------------------------------------------------------------
def _cifar10_readme(config_name: str, splits: list[str]) -> str:
    """A dataset card with the YAML the Hub's uoft-cs/cifar10 has: the features and one config's data files."""
    names = "\n".join(f"          '{index}': {name}" for index, name in enumerate(CIFAR10_NAMES))
    files = "\n".join(f"  - split: {split}\n    path: {config_name}/{split}-*" for split in splits)
    return (
        "---\n"
        "task_categories:\n- image-classification\n"
        "dataset_info:\n"
        f"  config_name: {config_name}\n"
        "  features:\n"
        "  - name: img\n    dtype: image\n"
        "  - name: label\n    dtype:\n      class_label:\n        names:\n"
        f"{names}\n"
        "configs:\n"
        f"- config_name: {config_name}\n"
        f"  data_files:\n{files}\n"
        "  default: true\n"
        "---\n"
        "# CIFAR-10 look-alike\n\nRandom 32x32 images with CIFAR-10's columns and class names, for tests.\n"
    )


def write_cifar10_like(
    folder: Path,
    *,
    rows: Mapping[str, int] | None = None,
    config_name: str = "plain_text",
    seed: int = 0,
) -> Path:
    """Write a repo folder laid out like the Hub's `uoft-cs/cifar10`, with random 32x32 PNG images.

    `{config_name}/{split}-00000-of-00001.parquet` for each split of `rows` (default 200 train, 100 test) with
    columns `img` (Image) and `label` (ClassLabel with the ten CIFAR-10 names), and a README.md whose YAML names
    the config, its data files and its features, as the real card does. Returns `folder`.
    """
    import datasets
    import numpy as np
    import pyarrow.parquet as pq
    from PIL import Image

    rows = dict(rows or {"train": 200, "test": 100})
    features = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=list(CIFAR10_NAMES))})
    rng = np.random.default_rng(seed)
    folder = Path(folder)
    (folder / config_name).mkdir(parents=True, exist_ok=True)
    for split, count in rows.items():
        images = []
        for pixels in rng.integers(0, 256, size=(count, 32, 32, 3), dtype=np.uint8):
            buffer = io.BytesIO()
            Image.fromarray(pixels).save(buffer, format="PNG")
            images.append({"bytes": buffer.getvalue(), "path": None})
        labels = (np.arange(count) % len(CIFAR10_NAMES)).tolist()
        # The Arrow schema carries the features (metadata key "huggingface"), as in the Hub's parquet files.
        table = datasets.Dataset.from_dict({"img": images, "label": labels}, features=features).data.table
        pq.write_table(table, folder / config_name / f"{split}-00000-of-00001.parquet")
    (folder / "README.md").write_text(_cifar10_readme(config_name, list(rows)), encoding="utf-8")
    return folder


def subset_parquet_folder(
    source: Path,
    dest: Path,
    *,
    rows: Mapping[str, int] | None = None,
) -> Path:
    """Copy a Hub-layout parquet folder keeping only the first rows of each split (default 200 train, 100 test).

    Every `*.parquet` file whose name starts with a split of `rows` keeps that many rows (schema and its
    `huggingface` features metadata unchanged); other parquet files are left out; any other file is copied as is.
    Returns `dest`.
    """
    import shutil

    import pyarrow.parquet as pq

    rows = dict(rows or {"train": 200, "test": 100})
    source, dest = Path(source), Path(dest)
    for item in sorted(source.rglob("*")):
        if not item.is_file():
            continue
        target = dest / item.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        if item.suffix != ".parquet":
            shutil.copyfile(item, target)
            continue
        split = next((name for name in rows if item.name.startswith(f"{name}-") or item.stem == name), None)
        if split is not None:
            pq.write_table(pq.read_table(item).slice(0, rows[split]), target)
    return dest
