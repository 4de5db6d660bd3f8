"""The benchmark grid on a small slice of CIFAR-10: records, caching and resuming."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from shared_data import CIFAR, DATA_DIR

from hf_fst.benchmark import GridConfig, GridRunner, read_records
from hf_fst.benchmark.grid import dataset_source
from hf_fst.benchmark.tensors import AugmentingCollator

needs_cifar = pytest.mark.skipif(not CIFAR.is_dir(), reason="local CIFAR-10 copy not present")


@needs_cifar
def test_grid_writes_records_and_resumes(tmp_path):
    config = GridConfig(
        data_dir=str(DATA_DIR),
        datasets=["cifar10"],
        attacks=["badnet"],
        poison_rates=[0.1],
        tuning_modes=["ft", "fst"],
        seeds=[0],
        num_train_images=400,
        num_test_images=200,
        backdoor_epochs=1,
        num_tuning_samples=64,
        tuning_epochs=1,
        results_file=str(tmp_path / "results.jsonl"),
        cache_dir=str(tmp_path / "cache"),
    )
    written = GridRunner(config).run()
    assert [r["tuning_mode"] for r in written] == ["ft", "fst"]
    records = read_records(config.results_file)
    assert records == written
    for record in records:
        for key in ("clean_accuracy", "attack_success_rate", "robust_accuracy", "before_clean_accuracy"):
            assert 0.0 <= record[key] <= 1.0
        assert record["num_tuning_samples"] == 64 and record["num_poisoned"] == 40
        assert record["tuning_seconds"] > 0
    assert {r["dataset_source"] for r in records} == {str(CIFAR)}
    assert records[0]["fst_alpha"] is None and records[1]["fst_alpha"] == 0.2
    assert len(list(Path(config.cache_dir).glob("*/model.safetensors"))) == 1

    # A second run finds every cell finished; a new mode reuses the cached backdoored model.
    assert GridRunner(config).run() == []
    config.tuning_modes = ["ft", "fst", "lp"]
    more = GridRunner(config).run()
    assert [r["tuning_mode"] for r in more] == ["lp"]
    assert more[0]["before_attack_success_rate"] == records[0]["before_attack_success_rate"]


def test_bad_grid_config():
    with pytest.raises(ValueError, match="tuning_modes: 'finetune'"):
        GridConfig(tuning_modes=["finetune"])
    with pytest.raises(ValueError, match="datasets: 'mnist'"):
        GridConfig(datasets=["mnist"])
    with pytest.raises(ValueError, match="poison_rates: 0"):
        GridConfig(poison_rates=[0])


def test_augmenting_collator_crops_and_flips():
    torch.manual_seed(0)
    image = torch.arange(3 * 8 * 8, dtype=torch.uint8).view(3, 8, 8)
    rows = [{"pixel_values": image, "labels": 1}] * 64
    batch = AugmentingCollator(padding=2)(rows)
    assert batch["pixel_values"].shape == (64, 3, 8, 8)
    pixels = (batch["pixel_values"] * 0.5 + 0.5) * 255
    # Every output is a shifted (and maybe mirrored) window of the zero-padded image.
    padded = torch.nn.functional.pad(image.float(), (2, 2, 2, 2))
    candidates = {
        (dy, dx, flip): padded[:, dy : dy + 8, dx : dx + 8].flip(-1) if flip else padded[:, dy : dy + 8, dx : dx + 8]
        for dy in range(5)
        for dx in range(5)
        for flip in (False, True)
    }
    matched = [next(k for k, window in candidates.items() if torch.equal(window, out)) for out in pixels.round()]
    assert len(set(matched)) > 10
    assert {flip for *_, flip in matched} == {False, True}


def test_augmentation_can_be_switched_off():
    image = torch.arange(3 * 8 * 8, dtype=torch.uint8).view(3, 8, 8)
    batch = AugmentingCollator(augment=False)([{"pixel_values": image, "labels": 1}] * 4)
    assert torch.equal(((batch["pixel_values"] * 0.5 + 0.5) * 255).round(), image.float().expand(4, 3, 8, 8))


def test_unknown_model_is_refused():
    with pytest.raises(ValueError, match="model: 'vit-xl' is unknown"):
        GridConfig(model="vit-xl")


def test_data_sets_come_from_the_hub_unless_a_data_dir_is_given(tmp_path):
    assert dataset_source("cifar10", None) == "uoft-cs/cifar10"
    assert dataset_source("gtsrb", None) == "tanganke/gtsrb"
    (tmp_path / "cifar10-jpeg").mkdir()
    assert dataset_source("cifar10", str(tmp_path)) == str(tmp_path / "cifar10-jpeg")
    with pytest.raises(ValueError, match=r"--data_dir=.*no folder named gtsrb or gtsrb-\*"):
        dataset_source("gtsrb", str(tmp_path))
    (tmp_path / "cifar10").mkdir()
    with pytest.raises(ValueError, match=r"2 folders \(cifar10, cifar10-jpeg\)"):
        dataset_source("cifar10", str(tmp_path))
    with pytest.raises(ValueError, match="is not a folder"):
        dataset_source("cifar10", str(tmp_path / "missing"))
