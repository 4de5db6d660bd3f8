"""Data sets by Hub id load offline from a cache that one online `load_dataset` filled (tests/dataset_cache.py).

The online load goes to the fake Hub in tests/hub_server.py; the offline ones run with `HF_HUB_OFFLINE=1` and an
endpoint where nothing listens, so only the cache under `HF_HOME` can answer.
"""

from __future__ import annotations

from dataset_cache import (
    CIFAR10_NAMES,
    load_in_subprocess,
    populate_dataset_cache,
    summary,
    write_cifar10_like,
)
from hub_server import FakeHub

REPO_ID = "uoft-cs/cifar10"
ROWS = {"train": 200, "test": 100}


def test_hub_dataset_loads_offline_from_a_populated_cache(tmp_path):
    source = write_cifar10_like(tmp_path / "source", rows=ROWS)
    hf_home = tmp_path / "hf_home"

    # An empty cache cannot answer offline: the check below is not vacuous.
    empty = load_in_subprocess(tmp_path / "empty_hf_home", REPO_ID)
    assert empty.returncode != 0
    assert "ConnectionError" in empty.stderr and REPO_ID in empty.stderr

    with FakeHub() as hub:
        populate_dataset_cache(hf_home, REPO_ID, source, hub=hub)
        sha = hub.datasets[REPO_ID].sha
        downloaded = {r.path for r in hub.requests if r.method == "GET" and r.path.endswith(".parquet")}
    assert downloaded == {
        f"/datasets/{REPO_ID}/resolve/{sha}/plain_text/{split}-00000-of-00001.parquet" for split in ROWS
    }
    # Both caches as a real download leaves them: huggingface_hub's repo snapshot and datasets' Arrow tables.
    hub_repo = hf_home / "hub" / "datasets--uoft-cs--cifar10"
    assert (hub_repo / "refs" / "main").read_text() == sha
    assert (hub_repo / "snapshots" / sha / "plain_text" / "train-00000-of-00001.parquet").is_file()
    assert (hf_home / "datasets" / "uoft-cs___cifar10" / "plain_text" / "0.0.0" / sha / "dataset_info.json").is_file()

    offline = summary(load_in_subprocess(hf_home, REPO_ID))
    assert {split: part["rows"] for split, part in offline.items()} == ROWS
    for part in offline.values():
        assert part["columns"] == ["img", "label"]
        assert part["features"]["img"]["_type"] == "Image"
        assert part["features"]["label"] == {"names": list(CIFAR10_NAMES), "_type": "ClassLabel"}

    # hf-fst's loader reads the same cache offline, at once, and says so in one line when the cache is empty.
    ours = summary(load_in_subprocess(hf_home, REPO_ID, loader="hf_fst"))
    assert ours == offline
    missing = load_in_subprocess(tmp_path / "empty_hf_home", REPO_ID, loader="hf_fst")
    assert missing.returncode != 0
    assert missing.stderr.strip().splitlines()[-1] == (
        f"ValueError: --dataset_name='{REPO_ID}': data set not found (the Hub cannot be reached and it is not in the "
        "local cache); pass a local folder instead (e.g. one written by save_pretrained / save_to_disk, or a "
        "parquet/imagefolder)"
    )
