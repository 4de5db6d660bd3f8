"""The benchmark grid on a small slice of CIFAR-10: records, caching and resuming."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from shared_data import CIFAR, cifar_data_dir

from hf_fst.benchmark import GridConfig, GridRunner, read_records
from hf_fst.benchmark.config import strong_grid_config
from hf_fst.benchmark.grid import dataset_source
from hf_fst.benchmark.tensors import PIXEL_MEAN, PIXEL_STD, AugmentingCollator
from hf_fst.tuning import FSTTrainer


def test_grid_writes_records_and_resumes(tmp_path):
    config = GridConfig(
        data_dir=str(cifar_data_dir(tmp_path)),
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
    assert not GridRunner(config).has_backdoored_model("cifar10", "badnet", 0.1, 0)
    written = GridRunner(config).run()
    assert [r["tuning_mode"] for r in written] == ["ft", "fst"]
    records = read_records(config.results_file)
    assert records == written
    for record in records:
        for key in ("clean_accuracy", "attack_success_rate", "robust_accuracy", "before_clean_accuracy"):
            assert 0.0 <= record[key] <= 1.0
        assert record["num_tuning_samples"] == 64 and record["num_poisoned"] == 40
        assert record["tuning_seconds"] > 0
    assert {r["dataset_source"] for r in records} == {str(CIFAR if CIFAR.exists() else tmp_path / "cifar10-synthetic")}
    assert records[0]["fst_alpha"] is None and records[1]["fst_alpha"] == 0.2
    assert len(list(Path(config.cache_dir).glob("*/model.safetensors"))) == 1

    # A second run finds every cell finished; a new mode reuses the cached backdoored model.
    assert GridRunner(config).run() == []
    config.tuning_modes = ["ft", "fst", "lp"]
    more = GridRunner(config).run()
    assert [r["tuning_mode"] for r in more] == ["lp"]
    assert more[0]["before_attack_success_rate"] == records[0]["before_attack_success_rate"]

    # Tuning on test images the model never saw: the draw is from the test split, its images and labels are used.
    runner = GridRunner(config)
    assert runner.has_backdoored_model("cifar10", "badnet", 0.1, 0)
    assert not runner.has_backdoored_model("cifar10", "badnet", 0.1, 1) and not runner.has_backdoored_model(
        "cifar10", "blended", 0.1, 0
    )
    model, _, _ = runner.backdoored_model("cifar10", "badnet", 0.1, 0)
    data = runner.load("cifar10")
    index = runner.tuning_index("cifar10", 0, 150, "test")
    assert len(index) == 150 and int(index.max()) < 200 and len(set(index.tolist())) == 150
    assert not torch.equal(index, runner.tuning_index("cifar10", 0, 150))  # another split, another draw
    trainer = runner.tune(model, "cifar10", "ft", 0, 150, 0.2, source="test")
    assert torch.equal(trainer.train_dataset.images, data["test_images"][index])
    assert trainer.train_dataset.labels.tolist() == data["test_labels"][index.numpy()].tolist()
    with pytest.raises(ValueError, match="source: 'validation'"):
        runner.tuning_index("cifar10", 0, 10, "validation")


def test_bad_grid_config():
    with pytest.raises(ValueError, match="tuning_modes: 'finetune'"):
        GridConfig(tuning_modes=["finetune"])
    with pytest.raises(ValueError, match="datasets: 'mnist'"):
        GridConfig(datasets=["mnist"])
    with pytest.raises(ValueError, match="poison_rates: 0"):
        GridConfig(poison_rates=[0])
    for folds in (0, True, 2.5):
        with pytest.raises(ValueError, match=rf"^fst_validation_folds: {folds!r} must be an integer >= 1"):
            GridConfig(fst_validation_folds=folds)


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


def test_collator_without_augmentation_only_stacks_and_normalises():
    rows = [{"pixel_values": torch.randint(0, 256, (3, 8, 8), dtype=torch.uint8), "labels": i} for i in range(16)]
    collator = AugmentingCollator(padding=3, flip=False)
    plain = collator.without_augmentation()
    assert collator.augment and not plain.augment and (plain.padding, plain.flip) == (3, False)
    expected = (torch.stack([r["pixel_values"] for r in rows]).float() / 255 - PIXEL_MEAN) / PIXEL_STD
    torch.testing.assert_close(plain(rows)["pixel_values"], expected)
    assert not torch.allclose(collator(rows)["pixel_values"], expected)


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


def test_crop_only_augmentation_never_mirrors():
    torch.manual_seed(0)
    image = torch.arange(3 * 8 * 8, dtype=torch.uint8).view(3, 8, 8)
    pixels = ((AugmentingCollator(padding=2, flip=False)([{"pixel_values": image, "labels": 1}] * 64)["pixel_values"]
               * 0.5 + 0.5) * 255).round()  # fmt: skip
    padded = torch.nn.functional.pad(image.float(), (2, 2, 2, 2))
    windows = [padded[:, dy : dy + 8, dx : dx + 8] for dy in range(5) for dx in range(5)]
    assert all(any(torch.equal(w, out) for w in windows) for out in pixels)
    assert len({next(i for i, w in enumerate(windows) if torch.equal(w, out)) for out in pixels}) > 10


def test_tuning_augmentation_follows_the_backdoor_training_unless_set():
    assert GridConfig().tuning_augment is False
    assert GridConfig(backdoor_augment=True).tuning_augment is True
    assert GridConfig(backdoor_augment=False, tuning_augment=True).tuning_augment is True
    with pytest.raises(ValueError, match="base_epochs: 0 must be >= 1"):
        GridConfig(base_epochs=0)
    with pytest.raises(ValueError, match="fst_alpha='x' must be a finite number >= 0 or 'auto'"):
        GridConfig(fst_alpha="x")
    assert GridConfig(fst_alpha="AUTO").fst_alpha == "auto"


def test_grid_second_threat_model_and_strength_records(tmp_path):
    """One clean base, backdoors implanted by fine-tuning it; every record says so and carries the strengths."""
    config = GridConfig(
        data_dir=str(cifar_data_dir(tmp_path)),
        attacks=["badnet", "wanet"],  # WaNet: warped per batch by the grid's collator; its retuning rows stored
        poison_rates=[0.1],
        tuning_modes=["ft", "fst"],
        seeds=[0],
        model="preact-resnet-18-w0.25",
        num_train_images=300,
        num_test_images=100,
        base_epochs=1,
        backdoor_epochs=1,
        backdoor_learning_rate=0.01,
        backdoor_augment=True,
        num_tuning_samples=60,
        tuning_epochs=1,
        fst_alpha="auto",
        max_accuracy_drop=0.05,
        fst_validation_folds=2,
        retuning_attack=True,
        retuning_poisoned_samples=3,
        results_file=str(tmp_path / "results.jsonl"),
        cache_dir=str(tmp_path / "cache"),
        disable_tqdm=True,
    )
    runner = GridRunner(config)
    records = runner.run()
    assert len(records) == 4
    # A study of variants tunes the same cached model with an FSTTrainer subclass and its own settings.
    model, _, _ = runner.backdoored_model("cifar10", "badnet", 0.1, 0)

    class Counting(FSTTrainer):
        penalties = 0

        def fst_penalty(self):
            type(self).penalties += 1
            return super().fst_penalty()

    variant = runner.tune(model, "cifar10", "fst", 0, 60, 2.0, trainer_class=Counting, normalize_fst_alpha=True)
    assert type(variant) is Counting and Counting.penalties == 1  # 60 images, batch 128: one step in one epoch
    assert variant.args.normalize_fst_alpha and variant.fst_alpha_normalized == pytest.approx(2.0)
    cached = sorted(p.name for p in Path(config.cache_dir).iterdir())
    assert len(cached) == 3 and sum("-clean-" in name for name in cached) == 1  # one base for both attacks
    base = [name for name in cached if "-clean-" in name][0]
    assert all(name.endswith(base.split("-clean-s0-")[1]) for name in cached)
    for record in records:
        assert record["base_training"] == {"epochs": 1, "learning_rate": 0.05, "seed": 0}
        assert record["tuning_augment"] is True and record["device"] == "cpu"
        assert record["head_weight_norm_squared"] > 0
    for cell in (records[:2], records[2:]):  # the retuning attack on each tuned model and once on the backdoored one
        assert all(r["retuning_poisoned_samples"] == 3 for r in cell)
        assert all(0 <= r[k] <= 1 for r in cell for k in ("retuning_attack_success_rate", "retuning_clean_accuracy"))
        assert cell[0]["before_retuning_attack_success_rate"] == cell[1]["before_retuning_attack_success_rate"]
    assert records[2]["attack_config"]["training_time"] is True and records[2]["num_poisoned"] == 30
    assert records[0]["attack_config"]["name"] == "badnet" and records[0]["attack_config"]["patch_size"] == 3
    ft, fst = records[0], records[1]
    assert ft["fst_alpha"] is None and ft["fst_alpha_normalized"] is None and ft["max_accuracy_drop"] is None
    assert fst["fst_alpha"] == "auto" and fst["max_accuracy_drop"] == 0.05 and fst["fst_validation_folds"] == 2
    assert ft["fst_validation_folds"] is None
    search = fst["fst_alpha_search"]
    # the grid augments in its collator, which judges held-out images without crop and flip
    assert search["folds"] == 2 and search["held_out_augmented"] is False
    assert len(search["tries"]) == 3 and fst["fst_alpha_normalized"] == pytest.approx(search["chosen"])
    assert fst["fst_alpha_effective"] == pytest.approx(search["chosen"] / fst["head_weight_norm_squared"], rel=1e-4)


def test_grid_fits_lf_and_trojannn_triggers_on_its_clean_model_once(tmp_path):
    config = GridConfig(
        data_dir=str(cifar_data_dir(tmp_path)),
        attacks=["lf", "trojannn"],
        poison_rates=[0.1],
        tuning_modes=["ft"],
        seeds=[0],
        model="preact-resnet-18-w0.25",
        num_train_images=200,
        num_test_images=100,
        base_epochs=1,
        backdoor_epochs=1,
        num_tuning_samples=40,
        tuning_epochs=1,
        results_file=str(tmp_path / "results.jsonl"),
        cache_dir=str(tmp_path / "cache"),
        disable_tqdm=True,
    )
    records = GridRunner(config).run()
    triggers = sorted(Path(config.cache_dir).glob("*-trigger-*.npy"))
    assert [p.name.split("-trigger-")[0].rsplit("-", 1)[1] for p in triggers] == ["lf", "trojannn"]
    for record, path in zip(records, triggers, strict=True):
        assert record["attack_config"]["pattern"] == str(path)
        array = np.load(path, allow_pickle=False)
        assert array.shape == (32, 32, 3) and array.min() >= 0 and array.max() <= 1
    lf, trojan = (np.load(p, allow_pickle=False) for p in triggers)
    assert lf.max() == pytest.approx(0.2, abs=1e-6)  # rescaled to the paper's range
    assert (trojan[:22] == 0).all() and (trojan[22:, 22:] > 0).any()  # only inside the bottom-right mask
    stamps = [p.stat().st_mtime_ns for p in triggers]
    config.tuning_modes = ["ft", "lp"]
    GridRunner(config).run()
    assert [p.stat().st_mtime_ns for p in triggers] == stamps  # fitted once, then read back


def test_strong_grid_settings_are_shared_by_the_studies_on_its_models():
    config = strong_grid_config("gtsrb", "data", "cache", seeds=[2])
    assert (config.datasets, config.base_epochs, config.num_tuning_samples, config.seeds) == (["gtsrb"], 20, 1000, [2])
    assert config.backdoor_augment and config.tuning_augment and config.model == "preact-resnet-18-w0.25"
    assert strong_grid_config("cifar10", None, "cache").base_epochs == 30
    with pytest.raises(ValueError, match="dataset: 'mnist' has no strong-grid base"):
        strong_grid_config("mnist", None, "cache")
