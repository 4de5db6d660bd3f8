"""The retuning attack and the trigger screen, on real (small) models trained on scikit-learn's digits."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from datasets import Dataset, Image
from PIL import Image as PILImage
from transformers import set_seed

from hf_fst import FSTConfig, FSTTrainer, evaluate_backdoor, get_attack, poison_dataset
from hf_fst.attacks import backdoor_test_set
from hf_fst.console import set_progress_bars
from hf_fst.demo import digits_dataset, small_resnet
from hf_fst.robustness import (
    class_shares,
    poisoned_sample,
    retuning_args,
    retuning_attack,
    retuning_set,
    robustness_markdown,
    screen_summary,
    trigger_screen,
)
from hf_fst.selection import select_tuning_set
from hf_fst.transforms import build_transform, collate_image_batch


@pytest.fixture(scope="module")
def digits():
    set_progress_bars(False)
    torch.set_num_threads(1)
    data = digits_dataset(seed=0)
    model = small_resnet()
    train_tf = build_transform(model, None, "image", "label", train=True, horizontal_flip=False, crop_padding=1)
    eval_tf = build_transform(model, None, "image", "label", train=False)
    attack = get_attack("blended")  # BackdoorBench defaults, target 0; implants reliably at 8x8

    def train(dataset, start=None, **settings):
        set_seed(0)
        args = FSTConfig(output_dir="unused", report_to="none", save_strategy="no", logging_strategy="no", use_cpu=True,
                         seed=0, disable_tqdm=True, dataloader_pin_memory=False, **settings)  # fmt: skip
        trainer = FSTTrainer(model=start or small_resnet(), args=args,
                             train_dataset=dataset.with_transform(train_tf), data_collator=collate_image_batch)  # fmt: skip
        trainer.train()
        return trainer.model.eval()

    common = {"tuning_mode": "ft", "num_train_epochs": 30, "learning_rate": 0.05, "per_device_train_batch_size": 64,
              "weight_decay": 5e-3}  # fmt: skip
    poisoned = poison_dataset(data["train"], attack, 0.1, seed=0)
    return {
        "data": data, "attack": attack, "poisoned": poisoned, "train_tf": train_tf, "eval_tf": eval_tf,
        "backdoored": train(poisoned, **common), "clean": train(data["train"], **common),
        "tuning": select_tuning_set(data["train"], ratio=0.2, seed=0),
        "backdoor_test": backdoor_test_set(data["test"], attack),
    }  # fmt: skip


def measure(model, digits) -> dict[str, float]:
    return evaluate_backdoor(
        model, digits["data"]["test"].with_transform(digits["eval_tf"]),
        digits["backdoor_test"].with_transform(digits["eval_tf"]), device="cpu",
    )  # fmt: skip


def test_class_shares_count_other_classes_only():
    predictions = np.array([0, 0, 1, 2, 0, 1])
    original = np.array([1, 2, 1, 0, 2, 0])
    # class 0: 4 images of other classes (1, 2, 1, 2), predicted 0 at positions 0, 1, 4 -> 3/4
    # class 1: 4 others (2, 0, 2, 0): predicted 1 at position 5 -> 1/4; class 2: 4 others, predicted 2 at 3 -> 1/4
    assert class_shares(predictions, original, 3).tolist() == [0.75, 0.25, 0.25]


def test_trigger_screen_flags_the_backdoored_model_and_not_the_clean_one(digits):
    test = digits["data"]["test"]
    before = trigger_screen(digits["backdoored"], test, digits["eval_tf"], "image", "label", num_classes=10)
    clean = trigger_screen(digits["clean"], test, digits["eval_tf"], "image", "label", num_classes=10)
    assert {"badnet", "blended", "sig", "wanet", "lc", "adaptive-blend"} <= set(before)
    assert all(len(shares) == 10 for shares in before.values())
    # Measured: the backdoored model sends 99.8% of blended images of classes 1-9 to class 0; the clean one at most
    # 33% to any class (to 8: a blended digit looks like an 8).
    assert int(np.argmax(before["blended"])) == 0 and max(before["blended"]) > 0.9
    assert max(clean["blended"]) < 0.5 and clean["blended"][0] < 0.2
    summary = screen_summary(before, clean)
    assert summary["blended"]["class"] == 0 and summary["blended"]["after"] == clean["blended"][0]
    assert summary["blended"]["after_largest"] == max(clean["blended"])
    card = robustness_markdown(summary, None, attack_known=False, num_poisoned=5, label_names=list("0123456789"))
    assert "claims no attack success rate" in card and "| blended | 0 (0) |" in card and "not a certificate" in card


def test_retuning_set_replaces_the_first_rows_with_poisoned_ones(digits):
    tuning, poisoned = digits["tuning"], digits["poisoned"]
    mixed = retuning_set(tuning, poisoned, 5)
    assert len(mixed) == len(tuning) and mixed.features == tuning.features
    flagged = np.flatnonzero(poisoned["is_poisoned"])[:5]
    assert list(mixed["label"][:5]) == [poisoned[int(i)]["label"] for i in flagged] == [0] * 5
    first = np.asarray(mixed[0]["image"], dtype=np.int16)
    assert np.array_equal(first, np.asarray(poisoned[int(flagged[0])]["image"], dtype=np.int16))
    assert list(mixed["label"][5:]) == list(tuning["label"][5:])
    with pytest.raises(ValueError, match=r"retuning_poisoned_samples=0 must be in \[1, 269\]"):
        retuning_set(tuning, poisoned, 0)
    with pytest.raises(ValueError, match="has only 0 poisoned rows"):
        retuning_set(tuning, poisoned.filter(lambda row: not row["is_poisoned"]), 5)


def test_clean_label_attacker_draws_from_a_rare_target_class():
    # 2,500 rows with only 6 of target class 0: a 2,000-row sample cannot hold the 10 (2 x 5) rows a clean-label
    # attack needs, so the attacker's images come from the target class itself (GTSRB's class 0 is 0.5%).
    rng = np.random.default_rng(0)
    labels = [0] * 6 + [int(c) for c in rng.integers(1, 5, size=2494)]
    pixels = rng.integers(0, 256, size=(2500, 8, 8, 3), dtype=np.uint8)
    data = Dataset.from_dict({"image": [PILImage.fromarray(p) for p in pixels], "label": labels})
    data = data.cast_column("image", Image())
    sig = get_attack("sig")
    poisoned = poisoned_sample(data, sig, 5, seed=0)
    flagged = np.flatnonzero(poisoned["is_poisoned"])
    assert len(flagged) == len(poisoned) == 6 and set(poisoned["label"]) == {0}
    expected = sig.apply(pixels[:6])  # each row is one of the six class-0 images with SIG's stripes added
    got = np.stack([np.asarray(image) for image in poisoned["image"]])
    assert sorted(map(bytes, got)) == sorted(map(bytes, expected))
    # A common target class keeps the 2,000-row sample and poisons about 2 x 5 of its rows.
    common = data.map(lambda row, i: {"label": i % 5}, with_indices=True)
    assert int(np.sum(poisoned_sample(common, sig, 5, seed=0)["is_poisoned"])) == 10
    with pytest.raises(ValueError, match=r"^the clean-label attack 'sig' poisons images of target class 0, and"):
        poisoned_sample(data.filter(lambda row: row["label"] != 0), sig, 5, seed=0)


def test_retuning_attack_keeps_a_backdoor_and_does_not_teach_a_clean_model(digits):
    mixed = retuning_set(digits["tuning"], digits["poisoned"], 5).with_transform(digits["train_tf"])
    args = retuning_args(seed=0, use_cpu=True, disable_tqdm=True)
    assert (args.learning_rate, args.num_train_epochs, args.lr_scheduler_type) == (0.01, 5, "constant")
    backdoored, clean = digits["backdoored"], digits["clean"]
    weights = {k: v.clone() for k, v in backdoored.state_dict().items()}
    on_backdoored = measure(retuning_attack(backdoored, mixed, args, collate_image_batch), digits)
    on_clean = measure(retuning_attack(clean, mixed, args, collate_image_batch), digits)
    assert all(torch.equal(v, backdoored.state_dict()[k]) for k, v in weights.items())  # input left alone
    # Measured: the backdoored model keeps ~100% ASR; five poisoned images do not teach a clean model the trigger.
    assert on_backdoored["attack_success_rate"] > 0.9
    assert on_clean["attack_success_rate"] < 0.2 and on_clean["clean_accuracy"] > 0.85
