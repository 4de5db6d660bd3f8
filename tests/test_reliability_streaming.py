"""Streaming: poisoning an `IterableDataset` row by row, and FST tuning from a stream (max_steps)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, Features, Image, Value, load_dataset
from safetensors.torch import save_file
from shared_data import write_cifar_subset
from tiny_models import tiny_resnet
from transformers import ResNetConfig, ResNetForImageClassification

from hf_fst import FSTConfig, FSTTrainer, get_attack
from hf_fst.attacks.streaming import count_poisoned, poison_iterable_dataset, row_draws
from hf_fst.errors import ConfigurationError
from hf_fst.selection import select_tuning_stream
from hf_fst.transforms import augmentation_epoch_callback, build_transform, collate_image_batch

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def parquet_dir(tmp_path_factory) -> Path:
    """200 CIFAR-10 training rows, every class, as a parquet folder that load_dataset can stream."""
    root = tmp_path_factory.mktemp("stream")
    for split, count in (("train", 200), ("test", 60)):
        write_cifar_subset(root, {split: count}, np.random.default_rng(1))
    return root


def rows_of(stream, limit: int | None = None) -> list[dict]:
    return [row for i, row in enumerate(stream) if limit is None or i < limit]


def test_row_draws_are_fixed_numbers():
    """The per-row draws are a pure function of (seed, row); the exact values are pinned by the next test."""
    first = row_draws(0, np.arange(3), 1)
    assert first.dtype == np.uint64 and len(set(first.tolist())) == 3
    assert np.array_equal(row_draws(0, np.arange(3), 1), first)
    assert not np.array_equal(row_draws(1, np.arange(3), 1), first)
    # A different seed is not the same sequence shifted by one row.
    assert not set(row_draws(1, np.arange(100), 1).tolist()) & set(row_draws(0, np.arange(100), 1).tolist())


def test_stream_poisoning_is_deterministic_and_bounded_per_row(parquet_dir):
    stream = load_dataset(str(parquet_dir), split="train", streaming=True)
    attack = get_attack("badnet", target_label=0)
    a = rows_of(poison_iterable_dataset(stream, attack, 0.2, seed=4, batch_size=64))
    b = rows_of(poison_iterable_dataset(stream, attack, 0.2, seed=4, batch_size=7))
    c = rows_of(poison_iterable_dataset(stream, attack, 0.2, seed=5, batch_size=64))
    clean = rows_of(stream)
    assert len(a) == len(clean) == 200
    flags = [r["is_poisoned"] for r in a]
    assert flags == [r["is_poisoned"] for r in b] and flags != [r["is_poisoned"] for r in c]
    assert 20 <= sum(flags) <= 60  # binomial(200, 0.2): mean 40
    for got, again, orig in zip(a, b, clean, strict=True):
        pixels = np.asarray(got["img"])
        assert np.array_equal(pixels, np.asarray(again["img"]))
        assert got["original_label"] == orig["label"]
        if got["is_poisoned"]:
            assert got["label"] == 0
            assert (pixels[-3:, -3:] == 255).all()  # the 3x3 white patch, bottom right
            rest = np.asarray(orig["img"].convert("RGB")).copy()
            rest[-3:, -3:] = 255
            assert np.array_equal(pixels, rest)  # and nothing else changed
        else:
            assert got["label"] == orig["label"] and np.array_equal(pixels, np.asarray(orig["img"]))


def test_clean_label_stream_and_refusals(parquet_dir):
    stream = load_dataset(str(parquet_dir), split="train", streaming=True)
    out = rows_of(poison_iterable_dataset(stream, get_attack("sig", target_label=3), 0.5, seed=0))
    poisoned = [r for r in out if r["is_poisoned"]]
    targets = [r for r in out if r["original_label"] == 3]
    assert poisoned and all(r["original_label"] == 3 and r["label"] == 3 for r in poisoned)
    assert len(poisoned) < len(targets)  # rate 0.5 of the target class, not all of it
    with pytest.raises(ValueError, match=r"^attack='lc' needs an up-front pass.*poison_dataset"):
        poison_iterable_dataset(stream, get_attack("lc", target_label=0, model=tiny_resnet(10)), 0.1)
    for bad in (0, 0.0, 1.01, -0.1):
        with pytest.raises(ValueError, match=r"^poison_rate=.*: expected a share of the rows in \(0, 1\]"):
            poison_iterable_dataset(stream, "badnet", bad)
    with pytest.raises(ValueError, match=r"^dataset=: expected a datasets.IterableDataset"):
        poison_iterable_dataset(Dataset.from_dict({"label": [0]}), "badnet", 0.1)
    for target in (10, 12):
        with pytest.raises(ValueError, match=rf"^target_label={target} is outside the label set"):
            poison_iterable_dataset(stream, get_attack("badnet", target_label=target), 0.1)
    with pytest.raises(ValueError, match=r"^dataset=: already has column\(s\) \['is_poisoned', 'original_label'\]"):
        poison_iterable_dataset(poison_iterable_dataset(stream, "badnet", 0.1), "badnet", 0.1)
    scored = stream.cast_column("label", Value("float32"))
    with pytest.raises(ValueError, match=r"^label_column='label' holds Value\('float32'\); expected integer"):
        poison_iterable_dataset(scored, "badnet", 0.1, label_column="label")


def _tune_from_stream(parquet_dir: Path, out: Path, max_steps: int | None) -> FSTTrainer:
    stream = load_dataset(str(parquet_dir), split="train", streaming=True)
    poisoned = poison_iterable_dataset(stream, get_attack("badnet", target_label=0), 0.1, seed=0)
    model = tiny_resnet(10)
    transform = build_transform(model, None, "img", "label", train=True, seed=0)
    batches = poisoned.map(transform, batched=True, batch_size=16, remove_columns=["img", "label", "original_label"])
    args = FSTConfig(
        output_dir=str(out), tuning_mode="fst", fst_alpha=0.2, per_device_train_batch_size=16,
        learning_rate=0.01, max_steps=max_steps or -1, save_strategy="no", report_to="none", seed=0,
        disable_tqdm=True, dataloader_pin_memory=False, remove_unused_columns=False,
    )  # fmt: skip
    trainer = FSTTrainer(
        model=model,
        args=args,
        train_dataset=batches,
        data_collator=collate_image_batch,
        callbacks=[augmentation_epoch_callback(transform)],
    )
    trainer.train()
    return trainer


def test_fst_tunes_from_a_stream_deterministically(parquet_dir, tmp_path):
    one = _tune_from_stream(parquet_dir, tmp_path / "one", max_steps=6)
    two = _tune_from_stream(parquet_dir, tmp_path / "two", max_steps=6)
    assert one.state.global_step == 6
    start = tiny_resnet(10).state_dict()
    first, second = one.model.state_dict(), two.model.state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not torch.equal(first["classifier.1.weight"], start["classifier.1.weight"])  # it did train
    # FST's norm projection holds on the stream as on a map-style set.
    assert torch.allclose(first["classifier.1.weight"].norm(), start["classifier.1.weight"].norm(), rtol=1e-5)
    save_file({k: v.contiguous() for k, v in first.items()}, tmp_path / "w.safetensors")
    with pytest.raises(ValueError, match="max_steps"):
        _tune_from_stream(parquet_dir, tmp_path / "three", max_steps=None)


def test_tuning_stream_selection(parquet_dir):
    stream = load_dataset(str(parquet_dir), split="train", streaming=True)
    picked, count = select_tuning_stream(stream, num_samples=24, seed=2)
    labels = [r["label"] for r in picked]
    assert count == len(labels) == 24
    assert labels == [r["label"] for r in select_tuning_stream(stream, num_samples=24, seed=2)[0]]
    assert labels != [r["label"] for r in select_tuning_stream(stream, num_samples=24, seed=3)[0]]
    assert len(set(labels)) >= 5  # spread over the stream, not its first rows (the file is sorted by label)
    by_ratio, counted = select_tuning_stream(stream, ratio=0.25, seed=2)
    assert counted == sum(1 for _ in by_ratio) and 25 <= counted <= 75


def _recipe(name: str = "purify"):
    key = f"hf_fst_recipe_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, REPO / "recipes" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module
        spec.loader.exec_module(module)
    return sys.modules[key]


def test_purify_recipe_streams_the_training_split(parquet_dir, tmp_path):
    torch.manual_seed(0)
    config = ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=10)
    ResNetForImageClassification(config).save_pretrained(tmp_path / "model")
    args = [
        "--dataset_name", str(parquet_dir), "--model_id", str(tmp_path / "model"), "--attack", "badnet",
        "--streaming", "--num_tuning_samples", "24", "--per_device_train_batch_size", "8", "--seed", "0",
        "--output_dir", str(tmp_path / "out"), "--report_to", "none", "--save_strategy", "no",
        "--disable_tqdm", "true", "--dataloader_pin_memory", "false",
    ]  # fmt: skip
    purify = _recipe()
    with pytest.raises(ConfigurationError, match=r"^--streaming: a stream has no length.*--max_steps"):
        purify.prepare(args)
    results = purify.main([*args, "--max_steps", "3"])
    saved = json.loads((tmp_path / "out" / "all_results.json").read_text())
    assert saved["num_tuning_samples"] == 24 and saved == json.loads(json.dumps(results))
    assert 0 <= saved["attack_success_rate"] <= 1 and saved["before_clean_accuracy"] is not None
    assert "24 clean images" in (tmp_path / "out" / "README.md").read_text()
    # The same seed again: the shuffled stream, the augmentation and so the weights repeat exactly.
    again = [a if a != str(tmp_path / "out") else str(tmp_path / "again") for a in args]
    purify.main([*again, "--max_steps", "3"])
    first, second = (tmp_path / "out" / "model.safetensors"), (tmp_path / "again" / "model.safetensors")
    assert first.read_bytes() == second.read_bytes()


def test_train_backdoor_recipe_streams_and_poisons(parquet_dir, tmp_path):
    torch.manual_seed(0)
    config = ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=10)
    ResNetForImageClassification(config).save_pretrained(tmp_path / "model")
    args = [
        "--dataset_name", str(parquet_dir), "--model_id", str(tmp_path / "model"), "--attack", "badnet",
        "--poison_rate", "0.1", "--streaming", "--max_steps", "3", "--per_device_train_batch_size", "8",
        "--seed", "1", "--output_dir", str(tmp_path / "out"), "--report_to", "none", "--save_strategy", "no",
        "--disable_tqdm", "true", "--dataloader_pin_memory", "false",
    ]  # fmt: skip
    results = _recipe("train_backdoor").main(args)
    stream = load_dataset(str(parquet_dir), split="train", streaming=True)
    flags = [r["is_poisoned"] for r in poison_iterable_dataset(stream, get_attack("badnet"), 0.1, seed=1)]
    assert results["num_poisoned"] == sum(flags) > 0
    saved = json.loads((tmp_path / "out" / "all_results.json").read_text())
    assert saved["num_poisoned"] == sum(flags) and (tmp_path / "out" / "model.safetensors").exists()


def test_stream_api_is_exported(parquet_dir):
    """`hf_fst.attacks` exports the streaming entry points; `poison_dataset` sends streams to them."""
    from hf_fst import attacks

    stream = load_dataset(str(parquet_dir), split="train", streaming=True)
    assert attacks.poison_iterable_dataset is poison_iterable_dataset
    flags = [r["is_poisoned"] for r in attacks.poison_iterable_dataset(stream, "badnet", 0.2, seed=4)]
    assert attacks.count_poisoned(stream, "badnet", 0.2, seed=4) == sum(flags) > 0


def test_poison_dataset_accepts_a_stream(parquet_dir):
    from datasets import IterableDataset

    from hf_fst import poison_dataset

    stream = load_dataset(str(parquet_dir), split="train", streaming=True)
    poisoned = poison_dataset(stream, "badnet", 0.2, seed=4)
    assert isinstance(poisoned, IterableDataset)
    direct = poison_iterable_dataset(stream, get_attack("badnet"), 0.2, seed=4)
    assert [r["is_poisoned"] for r in poisoned] == [r["is_poisoned"] for r in direct]


def test_count_poisoned_matches_the_stream_across_batches():
    """`count_poisoned` counts what the stream flags: over several 1,000-row batches, for a clean-label attack
    (only target-class rows) and a dirty-label one, with its default seed, reading the named label column of a
    stream whose columns cannot be told apart by type."""
    rng = np.random.default_rng(0)
    count = 2300
    fine = rng.integers(0, 3, count)
    pictures = rng.integers(0, 256, (count, 4, 4, 3), dtype=np.uint8)
    features = Features(
        {"front": Image(), "back": Image(), "coarse": ClassLabel(num_classes=3), "fine": ClassLabel(num_classes=3)}
    )
    table = {"front": list(pictures), "back": list(pictures), "coarse": list((fine + 1) % 3), "fine": list(fine)}
    stream = Dataset.from_dict(table, features=features).to_iterable_dataset()
    columns = {"image_column": "front", "label_column": "fine"}
    for attack, rate in ((get_attack("sig", target_label=2), 0.5), (get_attack("badnet", target_label=2), 0.1)):
        flags = [r["is_poisoned"] for r in poison_iterable_dataset(stream, attack, rate, **columns)]
        counted = count_poisoned(stream, attack, rate, **columns)
        assert counted == sum(flags) and 0 < counted < count
        assert count_poisoned(stream, attack, rate, 0, "front", "fine") == counted  # the columns' order
        assert count_poisoned(stream, attack, rate, seed=1, **columns) != counted
    only_target = count_poisoned(stream, get_attack("sig", target_label=2), 1.0, **columns)
    assert only_target == int((fine == 2).sum())
    with pytest.raises(ValueError, match=r"^image_column=: several possible image columns"):
        count_poisoned(stream, "badnet", 0.1, label_column="fine")


_M64 = (1 << 64) - 1


def _splitmix(x: int) -> int:
    """SplitMix64's output function on a Python int, written out from the published algorithm."""
    x = (x + 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def _draw(seed: int, row: int, stream: int) -> int:
    key = _splitmix(_splitmix(seed & _M64) ^ ((stream * 0xD1B54A32D192ED03) & _M64))
    return _splitmix((key + row * 0x9E3779B97F4A7C15) & _M64)


def _uniform(seed: int, row: int, stream: int) -> float:
    """The draw as a uniform number in [0, 1): its top 53 bits."""
    return (_draw(seed, row, stream) >> 11) / 2**53


def test_row_draws_match_splitmix64_written_out():
    """The per-row hash is SplitMix64 (its first output from state 0 is the published 0xE220A8397B1DCDAF) keyed
    by seed and stream; rows far apart and seeds past 2**32 included."""
    assert _splitmix(0) == 0xE220A8397B1DCDAF
    rows = np.array([0, 1, 2, 999, 123_456_789, 2**40 + 3], dtype=np.int64)
    for seed, stream in ((0, 1), (0, 2), (5, 1), (2**33 + 7, 3), (-1, 1)):
        expected = [_draw(seed, int(row), stream) for row in rows]
        assert row_draws(seed, rows, stream).tolist() == expected


def test_stream_rows_follow_the_written_out_policy_with_cover_rows():
    """Which rows are poisoned and which are cover rows, decided from the hash by hand: poisoned when the row's
    first draw is below the rate, cover (Adaptive-Blend, cover_rate 0.3 of the set, so 0.3 / 0.9 of the rows left)
    when not poisoned and the second draw is below that; a plain integer label column, named columns, default
    seed 0."""
    rng = np.random.default_rng(1)
    count, rate = 300, 0.1
    labels = rng.integers(0, 4, count)
    pictures = rng.integers(0, 256, (count, 8, 8, 3), dtype=np.uint8)
    features = Features({"front": Image(), "back": Image(), "y": Value("int64")})
    stream = Dataset.from_dict(
        {"front": list(pictures), "back": list(pictures), "y": labels.tolist()}, features=features
    ).to_iterable_dataset()
    attack = get_attack("adaptive-blend", target_label=2, cover_rate=0.3)
    out = rows_of(poison_iterable_dataset(stream, attack, rate, image_column="front", label_column="y"))
    poisoned = [_uniform(0, i, 1) < rate for i in range(count)]
    cover = [not poisoned[i] and _uniform(0, i, 2) < 0.3 / 0.9 for i in range(count)]
    assert 10 < sum(poisoned) < 60 and 60 < sum(cover) < 150
    for i, row in enumerate(out):
        changed = not np.array_equal(np.asarray(row["front"]), pictures[i])
        assert row["is_poisoned"] == poisoned[i] and changed == (poisoned[i] or cover[i]), i
        assert row["y"] == (2 if poisoned[i] else labels[i]) and row["original_label"] == labels[i]
        np.testing.assert_array_equal(np.asarray(row["back"]), pictures[i])


def test_training_time_stream_marks_rows_for_the_collator():
    """WaNet warped during training: the stream leaves every image as it is and marks each row's kind in an int8
    `trigger_kind` column (1 poisoned, 2 cross row at 2 per poisoned row: 0.4 / 0.8 of the rest, 0 clean)."""
    rng = np.random.default_rng(0)
    pictures = rng.integers(0, 256, (60, 8, 8, 3), dtype=np.uint8)
    features = Features({"image": Image(), "label": ClassLabel(num_classes=3)})
    table = {"image": list(pictures), "label": rng.integers(0, 3, 60).tolist()}
    stream = Dataset.from_dict(table, features=features).to_iterable_dataset()
    out = poison_iterable_dataset(stream, get_attack("wanet", training_time=True), 0.2, seed=3)
    assert out.features["trigger_kind"] == Value("int8")
    kinds = []
    for i, row in enumerate(out):
        np.testing.assert_array_equal(np.asarray(row["image"]), pictures[i])
        kinds.append(row["trigger_kind"])
    poisoned = [_uniform(3, i, 1) < 0.2 for i in range(60)]
    cross = [not poisoned[i] and _uniform(3, i, 2) < 0.5 for i in range(60)]
    assert kinds == [1 if p else 2 if c else 0 for p, c in zip(poisoned, cross, strict=True)]
    assert 0 < kinds.count(1) < kinds.count(2) < 60


def test_all_to_all_stream_relabels_with_the_class_label_count():
    """All-to-all on a stream: each poisoned row goes to the next class of the ClassLabel's own count (5), so a
    class-2 row becomes 3, not 0 as the largest label seen (2) would give."""
    rng = np.random.default_rng(0)
    labels = np.arange(60) % 3
    features = Features({"image": Image(), "label": ClassLabel(num_classes=5)})
    table = {"image": list(rng.integers(0, 256, (60, 8, 8, 3), dtype=np.uint8)), "label": labels.tolist()}
    stream = Dataset.from_dict(table, features=features).to_iterable_dataset()
    rows = rows_of(poison_iterable_dataset(stream, get_attack("badnet", label_mode="all-to-all"), 0.5, seed=1))
    poisoned = [r for r in rows if r["is_poisoned"]]
    assert any(r["original_label"] == 2 for r in poisoned)
    assert all(r["label"] == r["original_label"] + 1 for r in poisoned)
    assert all(r["label"] == r["original_label"] for r in rows if not r["is_poisoned"])
