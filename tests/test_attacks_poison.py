"""`poison_dataset` / `backdoor_test_set`: counts, index policy, determinism, fingerprints, modes, bad input."""

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, Value, load_dataset
from PIL import Image as PILImage
from shared_data import write_cifar_subset
from transformers import ResNetConfig, ResNetForImageClassification

from hf_fst.attacks import backdoor_test_set, get_attack, plan_poisoning, poison_dataset


def _pictures(n, h=32, w=32, mode="RGB", seed=0):
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "L": 1, "RGBA": 4, "LA": 2, "P": 1}[mode]
    out = []
    for _ in range(n):
        array = rng.integers(0, 256, size=(h, w, channels), dtype=np.uint8)
        if mode == "RGBA":
            array[..., 3] = rng.integers(1, 256, size=(h, w))
        if mode == "P":
            image = PILImage.fromarray(array[..., 0]).convert("RGB").quantize(colors=16)
        else:
            image = PILImage.fromarray(array[..., 0] if channels == 1 else array)
        assert image.mode == mode
        out.append(image)
    return out


def _dataset(n=200, num_classes=10, image_column="image", label_column="label", **kwargs) -> Dataset:
    features = Features({image_column: Image(), label_column: ClassLabel(num_classes=num_classes)})
    labels = [i % num_classes for i in range(n)]
    return Dataset.from_dict({image_column: _pictures(n, **kwargs), label_column: labels}, features=features)


def _pixels(dataset, column="image"):
    return [np.asarray(image) for image in dataset[column]]


# ----------------------------------------------------------------------------------------------------------------
# Counts and index policy
def test_dirty_label_counts_labels_and_untouched_rows():
    ds = _dataset(200)
    attack = get_attack("badnet", target_label=2)
    out = poison_dataset(ds, attack, 0.1, seed=0)
    assert out.column_names == ["image", "label", "is_poisoned", "original_label"] and len(out) == 200
    assert out.features["original_label"] == ds.features["label"]
    flags = np.array(out["is_poisoned"])
    assert flags.sum() == 20
    np.testing.assert_array_equal(out["original_label"], ds["label"])
    labels = np.array(out["label"])
    assert (labels[flags] == 2).all() and (labels[~flags] == np.array(ds["label"])[~flags]).all()
    # Rows drawn from the whole set, not just one class.
    assert len(set(np.array(ds["label"])[flags])) > 3
    before, after = _pixels(ds), _pixels(out)
    for i in range(200):
        expected = attack.apply(before[i][None])[0] if flags[i] else before[i]
        np.testing.assert_array_equal(after[i], expected)
    np.testing.assert_array_equal(np.flatnonzero(flags), plan_poisoning(ds["label"], attack, 0.1).poison_indices)


def test_rounding_of_the_count():
    ds = _dataset(30, num_classes=3)
    assert sum(poison_dataset(ds, "blended", 0.05)["is_poisoned"]) == 2  # round(1.5) -> 2
    assert sum(poison_dataset(ds, "blended", 1.0)["is_poisoned"]) == 30


def test_clean_label_draws_from_target_class_and_keeps_labels():
    ds = _dataset(200)  # 20 images per class
    out = poison_dataset(ds, get_attack("sig", target_label=4), 0.05, seed=1)
    flags = np.array(out["is_poisoned"])
    assert flags.sum() == 10
    assert (np.array(out["label"])[flags] == 4).all() and out["label"] == ds["label"]
    assert sum(poison_dataset(ds, get_attack("sig", target_label=4), 0.1)["is_poisoned"]) == 20  # the whole class
    with pytest.raises(ValueError, match=r"needs round\(0.15 \* 200\) = 30 images of target class 4, but only 20"):
        poison_dataset(ds, get_attack("sig", target_label=4), 0.15)


def test_all_to_all():
    ds = _dataset(100)
    attack = get_attack("badnet", label_mode="all-to-all")
    out = poison_dataset(ds, attack, 0.2)
    flags = np.array(out["is_poisoned"])
    original = np.array(out["original_label"])
    np.testing.assert_array_equal(np.array(out["label"])[flags], (original[flags] + 1) % 10)
    test = backdoor_test_set(ds, attack)
    assert len(test) == 100
    np.testing.assert_array_equal(test["label"], (np.array(test["original_label"]) + 1) % 10)


def test_cover_and_cross_rows_keep_their_labels():
    ds = _dataset(200)
    before = _pixels(ds)
    for name, ratio in [("adaptive-blend", 1), ("wanet", 2)]:
        attack = get_attack(name, training_time=False) if name == "wanet" else get_attack(name)
        out = poison_dataset(ds, attack, 0.05, seed=3)
        plan = plan_poisoning(ds["label"], attack, 0.05, seed=3)
        assert len(plan.poison_indices) == 10 and len(plan.cover_indices) == 10 * ratio
        assert not set(plan.poison_indices) & set(plan.cover_indices)
        flags = np.array(out["is_poisoned"])
        np.testing.assert_array_equal(np.flatnonzero(flags), plan.poison_indices)
        after = _pixels(out)
        changed = np.array([not np.array_equal(a, b) for a, b in zip(before, after, strict=True)])
        np.testing.assert_array_equal(np.flatnonzero(changed), np.sort(np.r_[plan.poison_indices, plan.cover_indices]))
        np.testing.assert_array_equal(
            np.array(out["label"])[plan.cover_indices], np.array(ds["label"])[plan.cover_indices]
        )


def test_training_time_attack_chooses_rows_and_labels_but_leaves_pixels():
    ds = _dataset(200)
    attack = get_attack("wanet", target_label=4)
    assert attack.is_training_time and not get_attack("wanet", training_time=False).is_training_time
    out = poison_dataset(ds, attack, 0.05, seed=3)
    plan = plan_poisoning(ds["label"], attack, 0.05, seed=3)
    kinds = np.array(out["trigger_kind"])
    np.testing.assert_array_equal(np.flatnonzero(kinds == 1), plan.poison_indices)
    np.testing.assert_array_equal(np.flatnonzero(kinds == 2), plan.cover_indices)
    assert (kinds > 0).sum() == 30
    np.testing.assert_array_equal(np.flatnonzero(out["is_poisoned"]), plan.poison_indices)
    labels = np.array(out["label"])
    assert set(labels[plan.poison_indices]) == {4}
    np.testing.assert_array_equal(labels[plan.cover_indices], np.array(ds["label"])[plan.cover_indices])
    for a, b in zip(_pixels(ds), _pixels(out), strict=True):
        np.testing.assert_array_equal(a, b)
    # The backdoor test set is stored warped by the fixed grid, as the static attack warps it.
    stored = backdoor_test_set(ds, attack)
    static = backdoor_test_set(ds, get_attack("wanet", target_label=4, training_time=False))
    for a, b in zip(_pixels(stored), _pixels(static), strict=True):
        np.testing.assert_array_equal(a, b)
    assert set(stored["trigger_kind"]) == {0}
    # Static attacks get no trigger_kind column.
    assert "trigger_kind" not in poison_dataset(ds, "badnet", 0.05).column_names


def test_backdoor_test_set_excludes_the_target_class():
    ds = _dataset(100)
    attack = get_attack("badnet", target_label=3)
    test = backdoor_test_set(ds, attack)
    assert len(test) == 90 and 3 not in test["original_label"]
    assert set(test["label"]) == {3} and all(test["is_poisoned"])
    source = np.flatnonzero(np.array(ds["label"]) != 3)
    for i, image in zip([0, 50, 89], [test[0]["image"], test[50]["image"], test[89]["image"]], strict=True):
        expected = attack.apply(np.asarray(ds[int(source[i])]["image"])[None])[0]
        np.testing.assert_array_equal(np.asarray(image), expected)
    # LC and Adaptive-Blend use their test-time triggers (LC needs no model for this).
    lc = backdoor_test_set(ds, "lc")
    np.testing.assert_array_equal(np.asarray(lc[0]["image"])[:3, :3, 0], [[255, 0, 255], [0, 255, 0], [255, 0, 255]])
    ab = backdoor_test_set(ds.select(range(10)), "adaptive-blend")
    np.testing.assert_array_equal(
        np.asarray(ab[0]["image"]), get_attack("blended").apply(np.asarray(ds[1]["image"])[None])[0]
    )


# ----------------------------------------------------------------------------------------------------------------
# Determinism, fingerprints and caching
def test_same_seed_same_rows_pixels_and_fingerprint():
    ds = _dataset(120)
    a = poison_dataset(ds, "adaptive-blend", 0.1, seed=7)
    b = poison_dataset(ds, "adaptive-blend", 0.1, seed=7, batch_size=16)
    c = poison_dataset(ds, "adaptive-blend", 0.1, seed=8)
    assert a._fingerprint == b._fingerprint != c._fingerprint
    assert a["is_poisoned"] == b["is_poisoned"] != c["is_poisoned"]
    for x, y in zip(_pixels(a), _pixels(b), strict=True):
        np.testing.assert_array_equal(x, y)
    assert poison_dataset(ds, get_attack("adaptive-blend", alpha=0.1), 0.1, seed=7)._fingerprint != a._fingerprint
    numpy_out = poison_dataset(ds.with_format("numpy"), "badnet", 0.1, seed=7)
    assert numpy_out.format["type"] == "numpy" and numpy_out[0]["image"].shape == (32, 32, 3)  # format kept


def test_num_proc_gives_the_same_result():
    ds = _dataset(60)
    one = poison_dataset(ds, "wanet", 0.1, seed=2)
    two = poison_dataset(ds, "wanet", 0.1, seed=2, num_proc=2, batch_size=10)
    assert one._fingerprint == two._fingerprint and one["is_poisoned"] == two["is_poisoned"]
    for x, y in zip(_pixels(one), _pixels(two), strict=True):
        np.testing.assert_array_equal(x, y)


def test_cache_hit_on_a_file_backed_dataset(tmp_path):
    _dataset(100).to_parquet(str(tmp_path / "train.parquet"))
    ds = load_dataset(
        "parquet", data_files=str(tmp_path / "train.parquet"), split="train", cache_dir=str(tmp_path / "c")
    )
    first = poison_dataset(ds, "blended", 0.1, seed=0)
    cache = Path(first.cache_files[0]["filename"])
    assert cache.exists() and cache.parent.is_relative_to(tmp_path)
    stamp = cache.stat().st_mtime_ns
    second = poison_dataset(ds, "blended", 0.1, seed=0)
    assert second._fingerprint == first._fingerprint
    assert second.cache_files[0]["filename"] == str(cache) and cache.stat().st_mtime_ns == stamp  # read, not rewritten
    assert poison_dataset(ds, "blended", 0.1, seed=1).cache_files[0]["filename"] != str(cache)


# ----------------------------------------------------------------------------------------------------------------
# Image modes and sizes
@pytest.mark.parametrize(
    ("mode", "out_mode"), [("RGB", "RGB"), ("L", "L"), ("RGBA", "RGBA"), ("LA", "LA"), ("P", "RGB")]
)
def test_every_image_mode(mode, out_mode):
    ds = _dataset(20, mode=mode)
    out = poison_dataset(ds, "badnet", 0.5)
    flags = np.array(out["is_poisoned"])
    for i in np.flatnonzero(flags)[:3]:
        image = out[int(i)]["image"]
        assert image.mode == out_mode and image.size == (32, 32)
        array = np.asarray(image)
        source = ds[int(i)]["image"]
        color = {"RGBA": 3, "LA": 1}.get(out_mode)
        if color:  # alpha channel preserved, trigger only on the colour channels
            np.testing.assert_array_equal(array[..., color], np.asarray(source)[..., color])
            assert (array[29:, 29:, :color] == 255).all()
        else:
            assert (array[29:, 29:] == 255).all()
            if mode == "P":
                np.testing.assert_array_equal(array[:29], np.asarray(source.convert("RGB"))[:29])
    clean = int(np.flatnonzero(~flags)[0])
    assert out[clean]["image"].mode == mode  # untouched rows keep their bytes and mode


def test_trigger_scales_with_native_size_and_image_size_resizes():
    ds = _dataset(10, h=64, w=48)
    out = poison_dataset(ds, "badnet", 1.0)
    array = np.asarray(out[0]["image"])
    assert array.shape == (64, 48, 3) and (array[-6:, -4:] == 255).all()  # 3 * 64/32 = 6, 3 * 48/32 = 4.5 -> 4 or 5
    assert not (array[-7, -4:] == 255).all()
    sized = poison_dataset(_dataset(10), get_attack("badnet", image_size=48), 0.5)
    flags = sized["is_poisoned"]
    sizes = [image.size for image in sized["image"]]
    assert all(s == (48, 48) for s, f in zip(sizes, flags, strict=True) if f)
    assert all(s == (32, 32) for s, f in zip(sizes, flags, strict=True) if not f)
    poisoned = np.asarray(sized[flags.index(True)]["image"])
    assert (poisoned[-5:, -5:] == 255).all()  # round(4.5) = 5 at 48x48
    test = backdoor_test_set(_dataset(10), get_attack("sig", image_size=(24, 40)))
    assert {image.size for image in test["image"]} == {(40, 24)}


# ----------------------------------------------------------------------------------------------------------------
# LC end to end (a tiny random ResNet stands in for the clean model)
def test_lc_poisoning_end_to_end():
    torch.manual_seed(0)
    model = ResNetForImageClassification(
        ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=10)
    )
    ds = _dataset(100)
    attack = get_attack("lc", model=model, steps=3, target_label=1)
    out = poison_dataset(ds, attack, 0.05)
    flags = np.array(out["is_poisoned"])
    assert flags.sum() == 5 and (np.array(ds["label"])[flags] == 1).all() and out["label"] == ds["label"]
    for i in np.flatnonzero(flags):
        before, after = np.asarray(ds[int(i)]["image"]).astype(int), np.asarray(out[int(i)]["image"]).astype(int)
        inner = (slice(3, 29), slice(None))
        assert 0 < np.abs(after[inner] - before[inner]).max() <= 8
        np.testing.assert_array_equal(after[:3, -3:, 0], [[255, 0, 255], [0, 255, 0], [255, 0, 255]])
    again = poison_dataset(ds, get_attack("lc", model=model, steps=3, target_label=1), 0.05)
    assert again._fingerprint == out._fingerprint


# ----------------------------------------------------------------------------------------------------------------
# Bad input: one-line ValueErrors that name the argument
@pytest.mark.parametrize("rate", [0, -0.1, 1.5, "0.1", True, float("nan")])
def test_bad_rate(rate):
    with pytest.raises(ValueError, match=r"^poison_rate="):
        poison_dataset(_dataset(20), "badnet", rate)


def test_bad_inputs():
    ds = _dataset(50)
    with pytest.raises(
        ValueError, match=r"^target_label=10 is outside the label set of column 'label' \(classes 0..9\)"
    ):
        poison_dataset(ds, get_attack("badnet", target_label=10), 0.1)
    with pytest.raises(ValueError, match=r"^target_label=10"):
        backdoor_test_set(ds, get_attack("badnet", target_label=10))
    with pytest.raises(ValueError, match=r"selects round\(0.001 \* 50\) = 0 rows"):
        poison_dataset(ds, "badnet", 0.001)
    with pytest.raises(ValueError, match=r"^image_column='pic' is not a column.*\['image', 'label'\]"):
        poison_dataset(ds, "badnet", 0.1, image_column="pic")
    with pytest.raises(ValueError, match=r"^dataset=: got a DatasetDict"):
        poison_dataset(DatasetDict(train=ds), "badnet", 0.1)
    with pytest.raises(ValueError, match=r"^num_proc=2: a stream is poisoned lazily"):
        poison_dataset(ds.to_iterable_dataset(), "badnet", 0.1, num_proc=2)
    with pytest.raises(ValueError, match=r"^dataset=: already has column\(s\) \['is_poisoned', 'original_label'\]"):
        poison_dataset(poison_dataset(ds, "badnet", 0.1), "badnet", 0.1)
    with pytest.raises(ValueError, match=r"^model=: the 'lc' attack needs a clean model"):
        poison_dataset(ds, "lc", 0.02)
    with pytest.raises(ValueError, match=r"^num_proc=0"):
        poison_dataset(ds, "badnet", 0.1, num_proc=0)
    text = Dataset.from_dict(
        {"image": ["a.png"], "label": [0]}, features=Features({"image": Value("string"), "label": Value("int64")})
    )
    with pytest.raises(ValueError, match=r"^image_column='image' holds .*cast_column"):
        poison_dataset(text, "badnet", 1.0)
    with pytest.raises(ValueError, match=r"^dataset=: every row has the target label 0"):
        backdoor_test_set(ds.filter(lambda row: row["label"] == 0), "badnet")
    with pytest.raises(ValueError, match=r"needs 45 poisoned \+ 90 cover rows"):
        poison_dataset(ds, "wanet", 0.9)


# ----------------------------------------------------------------------------------------------------------------
# CIFAR-shaped data (the local copy, or its synthetic JPEG stand-in)
def test_cifar10_slice_keeps_jpeg_bytes_of_clean_rows(tmp_path):
    folder = write_cifar_subset(tmp_path / "cifar", {"train": 300}, np.random.default_rng(0))
    ds = load_dataset(str(folder), split="train")
    out = poison_dataset(ds, "badnet", 0.1)  # columns img / label detected
    raw = out.cast_column("img", Image(decode=False))
    source = ds.cast_column("img", Image(decode=False))
    flags = np.array(out["is_poisoned"])
    assert flags.sum() == 30
    for i in range(0, 300, 7):
        encoded = raw[i]["img"]["bytes"]
        if flags[i]:
            assert PILImage.open(io.BytesIO(encoded)).format == "PNG"
            assert (np.asarray(out[i]["img"])[29:, 29:] == 255).all()
        else:
            assert encoded == source[i]["img"]["bytes"]


def test_backdoor_test_set_reads_the_named_columns_of_a_plain_integer_label():
    """Named image and label columns (a second image column and a ClassLabel decoy beside them); with plain
    integer labels the class count is the largest label + 1, for all-to-all relabelling and the target check."""
    rng = np.random.default_rng(0)
    pictures = rng.integers(0, 200, (9, 8, 8, 3), dtype=np.uint8)
    labels = [0, 1, 2, 0, 1, 2, 1, 1, 0]
    features = Features({"front": Image(), "back": Image(), "y": Value("int64"), "coarse": ClassLabel(num_classes=10)})
    features["wide"], features["score"] = ClassLabel(num_classes=10), Value("float32")
    table = {"front": list(pictures), "back": list(pictures), "y": labels, "coarse": [9] * 9, "wide": labels}
    dataset = Dataset.from_dict({**table, "score": [0.5] * 9}, features=features)
    columns = {"image_column": "front", "label_column": "y"}
    one = backdoor_test_set(dataset, get_attack("badnet", target_label=1), **columns)
    assert one["original_label"] == [0, 2, 0, 2, 0] and one["y"] == [1] * 5 and one["coarse"] == [9] * 5
    for row, source in zip(one, pictures[[0, 2, 3, 5, 8]], strict=True):
        front = np.asarray(row["front"])
        assert (front[-1, -1] == 255).all() and (front != source).any(-1).sum() == 1  # the patch, 1x1 at 8x8
        np.testing.assert_array_equal(np.asarray(row["back"]), source)
    every = backdoor_test_set(dataset, get_attack("badnet", label_mode="all-to-all"), **columns)
    assert every["y"] == [(label + 1) % 3 for label in labels]
    with pytest.raises(ValueError, match=r"^target_label=3 is outside the label set of column 'y' \(classes 0\.\.2\)"):
        backdoor_test_set(dataset, get_attack("badnet", target_label=3), **columns)
    wide = backdoor_test_set(dataset, get_attack("badnet", label_mode="all-to-all"), "front", "wide", num_proc=1)
    assert wide["wide"] == [label + 1 for label in labels]  # a ClassLabel's own class count (10), not the largest
    poisoned = poison_dataset(dataset, get_attack("badnet", label_mode="all-to-all"), 0.5, 2, "front", "wide")
    flags = np.array(poisoned["is_poisoned"])
    assert (flags & (np.array(labels) == 2)).any()  # a class-2 row poisoned: class 3 of 10, not 0 of 3
    assert poisoned["wide"] == [label + 1 if flag else label for label, flag in zip(labels, flags, strict=True)]
    plain = poison_dataset(dataset, get_attack("badnet", label_mode="all-to-all"), 0.5, 2, "front", "y")
    assert plain["y"] == [(label + 1) % 3 if flag else label for label, flag in zip(labels, flags, strict=True)]
    with pytest.raises(ValueError, match=r"^label_column='score' holds Value\('float32'\); expected integer"):
        backdoor_test_set(dataset, "badnet", "front", "score")
    for bad in (True, 0, 1.5):
        with pytest.raises(ValueError, match=r"^num_proc=.*: expected None or a positive int"):
            backdoor_test_set(dataset, "badnet", num_proc=bad, **columns)


def test_plan_poisoning_class_count_cover_rows_and_dtypes():
    """The class count comes from the labels unless given; cover rows may take every row left; dtypes as documented."""
    labels = np.array([0, 1, 2] * 4)
    every = get_attack("badnet", label_mode="all-to-all")
    given = plan_poisoning(labels, every, 0.5, seed=2, num_classes=10)
    inferred = plan_poisoning(labels, every, 0.5, seed=2)
    assert 2 in labels[given.indices]  # a class-2 row is poisoned: 3 of 10 classes, 0 of 3
    np.testing.assert_array_equal(given.labels, labels[given.indices] + 1)
    np.testing.assert_array_equal(inferred.labels, (labels[inferred.indices] + 1) % 3)
    with pytest.raises(
        ValueError, match=r"^target_label=5 is outside the label set of column 'labels' \(classes 0\.\.2\)"
    ):
        plan_poisoning(labels, get_attack("badnet", target_label=5), 0.1)
    full = plan_poisoning(np.arange(10) % 3, get_attack("adaptive-blend", cover_rate=0.9), 0.1)
    assert full.indices.tolist() == list(range(10)) and sorted(full.kinds.tolist()) == [1] + [2] * 9
    assert (full.indices.dtype, full.kinds.dtype, full.seeds.dtype) == (np.int64, np.int8, np.uint64)
    assert (plan_poisoning(np.arange(10) % 3, get_attack("adaptive-blend", cover_rate=0.3), 0.1).kinds == 2).sum() == 3


def test_poison_dataset_keeps_the_format_and_passes_named_columns_to_a_stream():
    """A formatted set comes back in the same format (type, columns, output_all_columns, kwargs); a stream is
    poisoned with the named columns and the same default seed as its map-style counterpart's policy."""
    rng = np.random.default_rng(0)
    pictures = rng.integers(0, 200, (20, 8, 8, 3), dtype=np.uint8)
    features = Features(
        {"front": Image(), "back": Image(), "y": ClassLabel(num_classes=3), "z": ClassLabel(num_classes=3)}
    )
    table = {"front": list(pictures), "back": list(pictures), "y": (np.arange(20) % 3).tolist(), "z": [0] * 20}
    dataset = Dataset.from_dict(table, features=features)
    dataset.set_format("numpy", columns=["y"], output_all_columns=True, dtype=np.int32)
    out = poison_dataset(dataset, "badnet", 0.2, image_column="front", label_column="y")
    assert out.format["type"] == "numpy" and out.format["columns"] == ["y"] and out.format["output_all_columns"]
    assert out.format["format_kwargs"] == {"dtype": np.int32} and out[:4]["y"].dtype == np.int32
    stream = dataset.with_format(None).to_iterable_dataset()
    flags = [r["is_poisoned"] for r in poison_dataset(stream, "badnet", 0.5, image_column="front", label_column="y")]
    again = poison_dataset(stream, "badnet", 0.5, seed=0, image_column="front", label_column="y")
    assert flags == [r["is_poisoned"] for r in again] and 0 < sum(flags) < 20
