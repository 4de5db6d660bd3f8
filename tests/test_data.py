"""Loading, checks and preprocessing (`hf_fst.loading`, `.transforms`, `.selection`, `.arguments`), on synthetic data and tiny models built from configs."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, Value
from PIL import Image as PILImage
from transformers import ResNetConfig, ResNetForImageClassification

from hf_fst.arguments import AttackArguments, parse_attack_params, validate_target_label
from hf_fst.loading import (
    check_head,
    get_split,
    label_names,
    load_classifier,
    load_image_dataset,
    load_image_processor,
    resolve_columns_or_raise,
)
from hf_fst.outputs import check_output_dir
from hf_fst.selection import select_tuning_set
from hf_fst.transforms import (
    DEFAULT_IMAGE_MEAN,
    DEFAULT_IMAGE_STD,
    build_transform,
    collate_image_batch,
    default_image_processor,
)


def tiny_resnet(num_labels: int = 4, num_channels: int = 3) -> ResNetForImageClassification:
    torch.manual_seed(0)
    config = ResNetConfig(
        num_channels=num_channels, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=num_labels
    )
    return ResNetForImageClassification(config)


def synthetic(n: int = 40, size: int = 8, mode: str = "RGB", num_classes: int = 4, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    shape = (size, size, 3) if mode == "RGB" else (size, size)
    images = [PILImage.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode) for _ in range(n)]
    features = Features({"picture": Image(), "target": ClassLabel(names=[f"c{i}" for i in range(num_classes)])})
    return Dataset.from_dict({"picture": images, "target": [i % num_classes for i in range(n)]}, features=features)


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """The Hub cannot be reached from the test machines: make that explicit and fast."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


# ------------------------------------------------------------------------------------------------ loading


def test_load_local_parquet_and_saved_folders(tmp_path):
    ds = DatasetDict({"train": synthetic(12), "test": synthetic(6, seed=1)})
    ds.save_to_disk(tmp_path / "saved")
    for split, part in ds.items():
        (tmp_path / "pq" / "data").mkdir(parents=True, exist_ok=True)
        part.to_parquet(tmp_path / "pq" / "data" / f"{split}-00000-of-00001.parquet")
    for folder in ("saved", "pq"):
        loaded = load_image_dataset(str(tmp_path / folder))
        assert sorted(loaded) == ["test", "train"]
        assert loaded["train"].num_rows == 12
        assert loaded["train"].features["target"].names == ["c0", "c1", "c2", "c3"]
    with pytest.raises(ValueError, match=r"--test_split='validation' is not a split.*use one of: train, test"):
        get_split(ds, "validation", arg_name="--test_split")


def test_missing_dataset_and_model_fail_fast_offline(tmp_path):
    start = time.perf_counter()
    with pytest.raises(ValueError) as err:
        load_image_dataset("nobody/no-such-dataset")
    message = str(err.value)
    assert message.startswith("--dataset_name='nobody/no-such-dataset'") and "\n" not in message
    assert "Hub cannot be reached" in message and "local folder" in message
    with pytest.raises(ValueError, match=r"--model_id='nobody/no-such-model'.*Hub cannot be reached.*local folder"):
        load_classifier("nobody/no-such-model")
    with pytest.raises(ValueError, match=r"--dataset_name='\./nowhere'.*no such local folder"):
        load_image_dataset("./nowhere")
    with pytest.raises(ValueError, match="without config.json"):
        load_classifier(str(tmp_path))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"--dataset_name=.*empty'.*not a readable data set"):
        load_image_dataset(str(tmp_path / "empty"))
    assert time.perf_counter() - start < 30  # no network retries


def test_model_folder_without_image_processor(tmp_path):
    model = tiny_resnet()
    model.save_pretrained(tmp_path / "m")
    assert load_image_processor(str(tmp_path / "m")) is None
    loaded = load_classifier(str(tmp_path / "m"))
    assert loaded.config.num_labels == 4
    default_image_processor(loaded.config, (8, 8)).save_pretrained(tmp_path / "m")
    processor = load_image_processor(str(tmp_path / "m"))
    assert processor is not None and processor.size == {"height": 8, "width": 8}


# ------------------------------------------------------------------------------------------------ checks


def test_check_head_errors():
    model = tiny_resnet(num_labels=4)
    name, layer = check_head(model, 4)
    assert name == "classifier.1" and layer.out_features == 4
    with pytest.raises(ValueError, match=r"--model_id: the head 'classifier.1' has 4 outputs but the data set has 10"):
        check_head(model, 10)
    headless = tiny_resnet(num_labels=0)  # ResNet puts an nn.Identity where the head would be
    with pytest.raises(ValueError, match=r"--model_id: .*no linear classification head.*head_name"):
        check_head(headless, 4)


def test_output_dir_is_never_clobbered(tmp_path):
    check_output_dir(tmp_path / "new", overwrite=False)
    check_output_dir(tmp_path, overwrite=False)  # empty
    (tmp_path / "keep.txt").write_text("precious")
    with pytest.raises(ValueError, match=r"--output_dir=.*not empty; pass --overwrite_output_dir"):
        check_output_dir(tmp_path, overwrite=False)
    check_output_dir(tmp_path, overwrite=True)
    assert (tmp_path / "keep.txt").read_text() == "precious"


def test_labels_columns_and_attack_arguments():
    ds = synthetic(8)
    assert label_names(ds, "target") == ["c0", "c1", "c2", "c3"]
    ints = ds.cast_column("target", Value("int64"))
    assert label_names(ints, "target") == ["0", "1", "2", "3"]
    assert resolve_columns_or_raise(ds, None, None) == ("picture", "target")
    with pytest.raises(ValueError, match=r"--image_column_name='img' is not a column.*\['picture', 'target'\]"):
        resolve_columns_or_raise(ds, "img", None)
    validate_target_label(3, 4)
    with pytest.raises(ValueError, match=r"--target_label=4 is outside the labels; use an integer in \[0, 3\]"):
        validate_target_label(4, 4)
    assert parse_attack_params('{"patch_size": 4}') == {"patch_size": 4}
    assert parse_attack_params("patch_size=4, location=top-left,value=200") == {
        "patch_size": 4,
        "location": "top-left",
        "value": 200,
    }
    with pytest.raises(ValueError, match="--attack_params"):
        parse_attack_params("patch_size")
    assert AttackArguments(attack="badnet", target_label=2).build(4).target_label == 2
    with pytest.raises(ValueError, match=r"--attack='nope' is not an attack;.*badnet"):
        AttackArguments(attack="nope").build(4)
    with pytest.raises(ValueError, match=r"--target_label=7"):
        AttackArguments(attack="badnet", target_label=7).build(4)


def test_tuning_set_is_seeded_and_sized():
    ds = synthetic(200)
    first = select_tuning_set(ds, ratio=0.02, seed=3)
    again = select_tuning_set(ds, ratio=0.02, seed=3)
    other = select_tuning_set(ds, ratio=0.02, seed=4)
    assert len(first) == 4
    assert first["target"] == again["target"] and first["picture"] == again["picture"]
    assert first["picture"] != other["picture"]
    assert len(select_tuning_set(ds, num_samples=17, seed=0)) == 17
    with pytest.raises(
        ValueError, match=r"--tuning_split_ratio=0.001 of 200 .* empty tuning set.*--num_tuning_samples"
    ):
        select_tuning_set(ds, ratio=0.001, seed=0)
    with pytest.raises(ValueError, match="--num_tuning_samples=0"):
        select_tuning_set(ds, num_samples=0)


# ------------------------------------------------------------------------------------------------ preprocessing


def test_transform_native_size_channels_and_normalisation():
    grey = synthetic(6, size=8, mode="L")
    model = tiny_resnet(num_channels=3)
    transform = build_transform(model, None, "picture", "target", train=False)
    batch = grey.with_transform(transform)[:6]
    assert set(batch) == {"pixel_values", "labels"}
    assert batch["pixel_values"].shape == (6, 3, 8, 8)  # grey converted to the model's 3 channels
    assert batch["labels"].tolist() == [0, 1, 2, 3, 0, 1]
    raw = np.asarray(grey[0]["picture"], dtype=np.float32) / 255.0
    expected = (raw - DEFAULT_IMAGE_MEAN) / DEFAULT_IMAGE_STD
    assert torch.allclose(batch["pixel_values"][0, 1], torch.from_numpy(expected), atol=1e-6)

    one_channel = build_transform(tiny_resnet(num_channels=1), None, "picture", "target")
    assert synthetic(2).with_transform(one_channel)[:2]["pixel_values"].shape == (2, 1, 8, 8)


def test_transform_passes_original_label_and_collates():
    ds = synthetic(4).add_column("original_label", [3, 2, 1, 0])
    transform = build_transform(tiny_resnet(), None, "picture", "target", train=False)
    row = ds.with_transform(transform)[1]
    assert row["original_label"].item() == 2 and row["labels"].item() == 1
    train = build_transform(tiny_resnet(), None, "picture", "target", train=True)
    rows = [ds.with_transform(train)[i] for i in range(4)]
    assert all("original_label" not in r for r in rows)
    batch = collate_image_batch(rows)
    assert set(batch) == {"pixel_values", "labels"} and batch["pixel_values"].shape == (4, 3, 8, 8)


def test_training_augmentation_crop_and_flip():
    ds = synthetic(64, size=16)
    model = tiny_resnet()
    plain = ds.with_transform(build_transform(model, None, "picture", "target", train=True, augment=False))[:64]
    torch.manual_seed(0)
    augmented = ds.with_transform(build_transform(model, None, "picture", "target", train=True))[:64]
    torch.manual_seed(0)
    again = ds.with_transform(build_transform(model, None, "picture", "target", train=True))[:64]
    assert torch.equal(augmented["pixel_values"], again["pixel_values"])  # seeded through torch's RNG
    changed = (augmented["pixel_values"] != plain["pixel_values"]).flatten(1).any(1)
    assert 0.5 < changed.float().mean() <= 1.0
    # Padding shows up as the normalised value of a black pixel, never as zeros of the normalised space.
    black = (0.0 - DEFAULT_IMAGE_MEAN) / DEFAULT_IMAGE_STD
    assert (augmented["pixel_values"] == black).any()
    # Flip only: each image is either unchanged or mirrored.
    flip_only = build_transform(model, None, "picture", "target", train=True, crop_padding=0)
    flipped = ds.with_transform(flip_only)[:64]["pixel_values"]
    same = (flipped == plain["pixel_values"]).flatten(1).all(1)
    mirrored = (flipped == plain["pixel_values"].flip(-1)).flatten(1).all(1)
    assert bool((same | mirrored).all()) and 0 < int(mirrored.sum()) < 64
    no_flip = build_transform(model, None, "picture", "target", train=True, crop_padding=0, horizontal_flip=False)
    assert torch.equal(ds.with_transform(no_flip)[:64]["pixel_values"], plain["pixel_values"])


def test_transform_uses_the_image_processor(tmp_path):
    model = tiny_resnet()
    processor = default_image_processor(model.config, (12, 12))
    processor.image_mean, processor.image_std = [0.2, 0.3, 0.4], [0.5, 0.5, 0.5]
    transform = build_transform(model, processor, "picture", "target", train=False)
    batch = synthetic(3, size=8).with_transform(transform)[:3]
    assert batch["pixel_values"].shape == (3, 3, 12, 12)  # resized by the processor
    expected = processor(images=[synthetic(3, size=8)[0]["picture"]], return_tensors="pt")["pixel_values"][0]
    assert torch.allclose(batch["pixel_values"][0], expected)


def test_trigger_goes_on_at_the_model_input_size():
    from hf_fst.attacks import get_attack
    from hf_fst.transforms import match_attack_to_model

    model, ds = tiny_resnet(), synthetic(4, size=8)
    attack = get_attack("badnet")
    assert match_attack_to_model(attack, model, None, ds, "picture").image_size is None  # native size
    resizing = default_image_processor(model.config, (12, 12))
    assert match_attack_to_model(attack, model, resizing, ds, "picture").image_size == (12, 12)
    explicit = get_attack("badnet", image_size=10)
    assert match_attack_to_model(explicit, model, resizing, ds, "picture").image_size == (10, 10)
