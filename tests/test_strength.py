"""FST's strength: the scale-free (normalised) penalty and `fst_alpha="auto"`, the search within an accuracy budget."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from tiny_models import fst_args, random_image_rows, tiny_resnet

from hf_fst import FSTConfig, FSTTrainer
from hf_fst.arguments import recipe_parser
from hf_fst.tuning.search import (
    DEFAULT_STRENGTHS,
    bisect_strengths,
    dataset_labels,
    describe_search,
    search_fst_alpha,
    stratified_split,
)


# ------------------------------------------------------------------------------------------ normalised penalty
def test_normalised_penalty_is_the_raw_one_divided_by_the_head_norm_squared(tmp_path):
    model = tiny_resnet()
    w0 = model.classifier[1].weight.detach().clone()
    raw = FSTTrainer(model=model, args=fst_args(tmp_path, fst_alpha=0.3))
    scaled = FSTTrainer(model=model, args=fst_args(tmp_path, fst_alpha=0.3, normalize_fst_alpha=True))
    inner = float((raw.head.weight.detach() * w0).sum())
    norm2 = float(w0.pow(2).sum())
    assert float(raw.fst_penalty().detach()) == pytest.approx(0.3 * inner, rel=1e-5)
    assert float(scaled.fst_penalty().detach()) == pytest.approx(0.3 * inner / norm2, rel=1e-5)
    assert raw.fst_alpha_raw == pytest.approx(0.3) and raw.fst_alpha_normalized == pytest.approx(0.3 * norm2, rel=1e-5)
    assert scaled.fst_alpha_raw == pytest.approx(0.3 / norm2, rel=1e-5)
    assert scaled.fst_alpha_normalized == pytest.approx(0.3, rel=1e-5)


def test_a_normalised_strength_trains_exactly_as_its_paper_alpha(tmp_path):
    model = tiny_resnet()
    norm2 = float(model.classifier[1].weight.detach().pow(2).sum())
    rows = random_image_rows(48)
    common = {"num_train_epochs": 2, "per_device_train_batch_size": 16}
    normalised = FSTTrainer(model=model, args=fst_args(tmp_path, fst_alpha=4.0, normalize_fst_alpha=True, **common),
                            train_dataset=rows)  # fmt: skip
    paper = FSTTrainer(model=model, args=fst_args(tmp_path, fst_alpha=4.0 / norm2, **common), train_dataset=rows)
    normalised.train()
    paper.train()
    for (name, a), b in zip(normalised.model.state_dict().items(), paper.model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=name)
    # A strength this large moves the head: the runs differ from one without the penalty.
    plain = FSTTrainer(model=model, args=fst_args(tmp_path, fst_alpha=0.0, **common), train_dataset=rows)
    plain.train()
    assert not torch.allclose(plain.head.weight, normalised.head.weight, atol=1e-3)


# ----------------------------------------------------------------------------------------------- arguments
@pytest.mark.parametrize(("text", "value"), [("auto", "auto"), ("AUTO", "auto"), ("0.3", 0.3), ("0", 0.0)])
def test_fst_alpha_from_the_command_line(tmp_path, text, value):
    (config,) = recipe_parser([FSTConfig]).parse(["--output_dir", str(tmp_path), "--fst_alpha", text])
    assert config.fst_alpha == value and type(config.fst_alpha) is type(value)
    assert config.uses_fst_penalty is (value != 0.0)
    assert config.searches_fst_alpha is (value == "auto")


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("fst_alpha", "strong", r"^fst_alpha='strong' must be a finite number >= 0 or 'auto'; pass e\.g\."),
        ("fst_alpha", None, r"^fst_alpha=None must be"),
        ("fst_alpha", True, r"^fst_alpha=True must be"),
        ("max_accuracy_drop", 0.0, r"^max_accuracy_drop=0\.0 must be a fraction in \(0, 1\); pass e\.g\. .* 0\.02"),
        ("max_accuracy_drop", 2, r"^max_accuracy_drop=2 must be a fraction"),
        ("max_accuracy_drop", -0.01, r"^max_accuracy_drop=-0\.01 must be a fraction"),
        ("fst_validation_fraction", 1.0, r"^fst_validation_fraction=1\.0 must be a fraction"),
    ],
)
def test_bad_strength_settings_are_refused_by_name(tmp_path, field, value, message):
    with pytest.raises(ValueError, match=message):
        FSTConfig(output_dir=str(tmp_path), **{field: value})


# ----------------------------------------------------------------------------------------- held-out split
def test_stratified_split_holds_out_each_class_in_proportion_and_is_seeded():
    labels = np.repeat(np.arange(4), [50, 20, 10, 1])
    keep, held = stratified_split(labels, 0.2, seed=3)
    assert np.intersect1d(keep, held).size == 0 and np.union1d(keep, held).tolist() == list(range(81))
    assert [int(np.sum(labels[held] == c)) for c in range(4)] == [10, 4, 2, 0]  # a lone image stays for tuning
    again_keep, again_held = stratified_split(labels, 0.2, seed=3)
    assert np.array_equal(keep, again_keep) and np.array_equal(held, again_held)
    assert not np.array_equal(held, stratified_split(labels, 0.2, seed=4)[1])
    # Two images of a class: one is held out even at a small fraction, one stays.
    pair = np.array([0, 0, 1, 1, 1])
    assert [int(np.sum(pair[stratified_split(pair, 0.01, 0)[1]] == c)) for c in (0, 1)] == [1, 1]


# ------------------------------------------------------------------------------------------------ bisection
def test_bisection_finds_the_strongest_strength_within_the_budget_in_three_tries():
    seen = []

    def accuracy(strength):
        seen.append(strength)
        return 0.90 - 0.01 * strength  # falls as the shift grows

    tries, chosen = bisect_strengths(DEFAULT_STRENGTHS, accuracy, floor=0.85)  # 0.9 - 0.01 s >= 0.85 for s <= 5
    assert chosen == 4.0 and seen == [2.0, 8.0, 4.0]
    assert [t["within_budget"] for t in tries] == [True, False, True]
    assert bisect_strengths(DEFAULT_STRENGTHS, accuracy, floor=0.0)[1] == 16.0
    none_tries, none = bisect_strengths(DEFAULT_STRENGTHS, accuracy, floor=0.95)
    assert none is None and [t["fst_alpha_normalized"] for t in none_tries] == [2.0, 0.5, 0.25]
    with pytest.raises(ValueError, match="strictly ascending"):
        bisect_strengths((1.0, 1.0), accuracy, 0.5)


# ------------------------------------------------------------------------------------------------ auto mode
class CountingTrainer(FSTTrainer):
    """Counts the trainers built (the search builds its candidates from the trainer's own class)."""

    built = 0

    def __init__(self, *args, **kwargs):
        type(self).built += 1
        super().__init__(*args, **kwargs)


def _auto(tmp_path, rows, **overrides):
    args = fst_args(tmp_path, fst_alpha="auto", num_train_epochs=2, per_device_train_batch_size=16, **overrides)
    return args, CountingTrainer(model=tiny_resnet(), args=args, train_dataset=rows)


def test_auto_searches_deterministically_and_leaves_the_callers_config_alone(tmp_path):
    rows = random_image_rows(60)
    CountingTrainer.built = 0
    args, trainer = _auto(tmp_path, rows)
    trainer.train()
    search = trainer.fst_alpha_search.to_dict()
    # one reference trainer for the input model's held-out accuracy and three candidates, besides the trainer itself
    assert CountingTrainer.built == 5 and len(search["tries"]) == 3
    counts = np.bincount([row["labels"] for row in rows])
    assert search["validation_size"] == sum(round(0.2 * c) for c in counts) == 12  # 20% of each class, rounded
    floor = search["baseline_accuracy"] - search["max_accuracy_drop"]
    assert all(t["within_budget"] == (t["validation_accuracy"] >= floor) for t in search["tries"])
    within = [t["fst_alpha_normalized"] for t in search["tries"] if t["within_budget"]]
    tried = [t["fst_alpha_normalized"] for t in search["tries"]]
    assert search["chosen"] == (max(within) if within else min(tried)) and search["budget_met"] == bool(within)
    assert args.fst_alpha == "auto" and trainer.args.fst_alpha == search["chosen"] and trainer.args.normalize_fst_alpha
    assert trainer.fst_alpha_raw == pytest.approx(search["chosen"] / search["head_norm_squared"], rel=1e-6)
    assert "chosen without attack knowledge" in describe_search(search)
    _, again = _auto(tmp_path, rows)
    again.train()
    assert again.fst_alpha_search.to_dict() == search
    for a, b in zip(trainer.model.parameters(), again.model.parameters(), strict=True):
        torch.testing.assert_close(a, b)


def test_auto_resumes_with_the_strength_it_chose(tmp_path):
    rows = random_image_rows(60)
    args, trainer = _auto(tmp_path, rows, save_strategy="epoch")
    trainer.train()
    chosen = trainer.fst_alpha_search.to_dict()
    CountingTrainer.built = 0
    _, resumed = _auto(tmp_path, rows, save_strategy="epoch")
    resumed.train(resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-4"))
    assert CountingTrainer.built == 1  # no search again
    assert resumed.fst_alpha_search.to_dict() == chosen and resumed.args.fst_alpha == chosen["chosen"]


def test_auto_refusals(tmp_path):
    model = tiny_resnet()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    args = fst_args(tmp_path, fst_alpha="auto")
    with pytest.raises(ValueError, match=r"^fst_alpha='auto' tunes several candidate models.*drop optimizers="):
        FSTTrainer(model=model, args=args, optimizers=(optimizer, None))
    lonely = FSTTrainer(model=model, args=args, train_dataset=[random_image_rows(1)[0]] * 1)
    with pytest.raises(ValueError, match=r"^fst_alpha='auto' needs tuning data to hold out"):
        lonely.train()
    # In another mode the search is off.
    assert not FSTConfig(output_dir=str(tmp_path), tuning_mode="ft", fst_alpha="auto").searches_fst_alpha


def test_describe_search_states_the_numbers():
    tries = [
        {"fst_alpha_normalized": 2.0, "validation_accuracy": 0.905, "within_budget": True},
        {"fst_alpha_normalized": 4.0, "validation_accuracy": 0.871, "within_budget": False},
    ]
    search = {"tries": tries, "validation_size": 200, "max_accuracy_drop": 0.02, "baseline_accuracy": 0.92,
              "budget_met": True, "chosen": 2.0, "chosen_alpha": 0.0712345}  # fmt: skip
    assert describe_search(search) == (
        "alpha was chosen without attack knowledge (`fst_alpha=auto`): the strongest normalised shift whose accuracy "
        "on 200 held-out clean tuning images stayed within 2 points of the input model's (92.0%). "
        "Tried (strength alpha x ||W0||^2, held-out accuracy): 2 (90.5%), 4 (87.1%, over). "
        "Chosen: 2, alpha = 0.07123; then tuned on all images."
    )
    missed = dict(search, budget_met=False, chosen=0.25, tries=[dict(t, within_budget=False) for t in tries])
    assert describe_search(missed).endswith(
        "2 (90.5%, over), 4 (87.1%, over). No strength met the budget, so the weakest tried (0.25) was kept: "
        "expect a larger drop, and consider more clean tuning data or a larger budget."
    )


def test_auto_candidates_are_paper_fst_runs_at_normalised_strengths_on_the_tuning_part(tmp_path):
    """Every number of the search, recomputed by hand: the input model's held-out accuracy and each candidate as a
    plain normalised FST run on the tuning part, scored on the held-out part."""

    def model():  # a head with ||W0||^2 about 37, as real heads have (26-29 in the grid): raw and normalised differ
        network = tiny_resnet()
        with torch.no_grad():
            network.classifier[1].weight.mul_(5.0)
        return network

    generator = torch.Generator().manual_seed(3)  # learnable rows: the class shifts the first channel
    rows = [{"pixel_values": torch.randn(3, 16, 16, generator=generator) + torch.tensor([i % 5 - 2.0, 0, 0])[:, None, None],
             "labels": i % 5} for i in range(60)]  # fmt: skip
    common = {"num_train_epochs": 4, "per_device_train_batch_size": 16, "learning_rate": 0.05}
    args = fst_args(tmp_path / "auto", fst_alpha="auto", **common)
    trainer = FSTTrainer(model=model(), args=args, train_dataset=rows)
    trainer.train()
    search = trainer.fst_alpha_search.to_dict()
    keep, held = stratified_split(np.array([r["labels"] for r in rows]), 0.2, seed=7)
    held_rows = [rows[i] for i in held]
    held_labels = np.array([r["labels"] for r in held_rows])

    def accuracy(model):
        model.eval()
        with torch.no_grad():
            logits = model(pixel_values=torch.stack([r["pixel_values"] for r in held_rows])).logits
        return float(np.mean(logits.argmax(-1).numpy() == held_labels))

    assert search["baseline_accuracy"] == pytest.approx(accuracy(model()), abs=1e-9)
    assert search["head_norm_squared"] == pytest.approx(float(model().classifier[1].weight.pow(2).sum()), rel=1e-6)
    for t in search["tries"]:
        args = fst_args(tmp_path / f"by-hand-{t['fst_alpha_normalized']}", tuning_mode="fst",
                        fst_alpha=t["fst_alpha_normalized"], normalize_fst_alpha=True, **common)  # fmt: skip
        by_hand = FSTTrainer(model=model(), args=args, train_dataset=[rows[i] for i in keep])
        by_hand.train()
        assert t["validation_accuracy"] == pytest.approx(accuracy(by_hand.model), abs=1e-9)
        assert t["fst_alpha"] == pytest.approx(t["fst_alpha_normalized"] / search["head_norm_squared"], rel=1e-9)
    # The held-out accuracies differ between strengths: the candidates really trained with their strength.
    assert len({t["validation_accuracy"] for t in search["tries"]}) > 1


def test_labels_are_read_from_the_raw_column_without_the_transform():
    from datasets import ClassLabel, Dataset, Features, Image, Value
    from PIL import Image as PILImage

    pictures = [PILImage.new("RGB", (4, 4), (i, i, i)) for i in range(6)]
    features = Features({"img": Image(), "label": ClassLabel(num_classes=3)})
    data = Dataset.from_dict({"img": pictures, "label": [2, 0, 1, 1, 0, 2]}, features=features)

    def transform(batch):  # what a recipe sets: pixel_values and labels, never label
        raise AssertionError("the labels must be read without running the image transform")

    # the tuning set's own label column, found by name when the trainer's key is "labels"
    np.testing.assert_array_equal(dataset_labels(data.with_transform(transform), "labels"), [2, 0, 1, 1, 0, 2])
    # a custom label key (label_names=["target"]) wins over a column the detection would pick
    custom = data.add_column("target", [5, 5, 4, 4, 3, 3]).cast_column("target", Value("int64"))
    np.testing.assert_array_equal(dataset_labels(custom.with_transform(transform), "target"), [5, 5, 4, 4, 3, 3])
    rows = [{"pixel_values": torch.zeros(1), "labels": y} for y in (4, 3)]
    np.testing.assert_array_equal(dataset_labels(rows, "labels"), [4, 3])


def test_split_and_bisection_edges():
    # A singleton class is skipped (not the end of the loop); a large fraction still leaves one image to tune on.
    labels = np.array([0, 1, 1, 2, 2, 2])
    keep, held = stratified_split(labels, 0.9, seed=0)
    assert sorted(labels[held].tolist()) == [1, 2, 2] and sorted(labels[keep].tolist()) == [0, 1, 2]
    # An accuracy exactly on the floor is within the budget; the first strength must be positive.
    tries, chosen = bisect_strengths((1.0, 2.0, 3.0), lambda s: 0.5, floor=0.5)
    assert chosen == 3.0 and all(t["within_budget"] for t in tries)
    with pytest.raises(ValueError, match=r"^strengths=\(0\.0, 1\.0\) must be positive and strictly ascending"):
        bisect_strengths((0.0, 1.0), lambda s: 1.0, floor=0.0)


def _separable_rows(n: int, seed: int) -> list[dict]:
    """Rows a tiny model learns: the class moves the first channel far from the others."""
    generator = torch.Generator().manual_seed(seed)
    return [{"pixel_values": torch.randn(3, 16, 16, generator=generator) + torch.tensor([4.0 * (i % 5) - 8, 0, 0])[:, None, None],
             "labels": i % 5} for i in range(n)]  # fmt: skip


def test_candidates_use_the_trainers_collator_and_loss(tmp_path):
    """A user's `data_collator` and `compute_loss_func` reach every candidate, not only the final run."""
    rows, seen, losses = random_image_rows(60), [], []

    def collator(features):
        seen.append(len(features))
        return {"pixel_values": torch.stack([f["pixel_values"] for f in features]),
                "labels": torch.tensor([f["labels"] for f in features])}  # fmt: skip

    def loss_func(outputs, labels, num_items_in_batch=None):
        losses.append(len(labels))
        return torch.nn.functional.cross_entropy(outputs.logits, labels)

    args = fst_args(tmp_path, fst_alpha="auto", num_train_epochs=2, per_device_train_batch_size=16)
    trainer = FSTTrainer(model=tiny_resnet(), args=args, train_dataset=rows, data_collator=collator,
                         compute_loss_func=loss_func)  # fmt: skip
    trainer.train()
    assert len(trainer.fst_alpha_search.tries) == 3
    # 12 held-out and 48 tuning rows: the reference predicts 12; each candidate trains 2 x 48 and predicts 12;
    # the final run trains 2 x 60.
    assert sum(seen) == 12 + 3 * (2 * 48 + 12) + 2 * 60
    assert sum(losses) == sum(seen)  # every batch, training and held-out evaluation alike, through the user's loss


def test_no_strength_within_the_budget_keeps_the_weakest_tried_and_reads_tuple_predictions(tmp_path):
    """The fallback, on a model whose outputs are tuples (logits and hidden states): candidates that barely move
    from a fresh head fall below a trained model's held-out accuracy, so the weakest tried strength is kept."""
    rows = _separable_rows(60, seed=1)
    pre = FSTTrainer(model=tiny_resnet(), args=fst_args(tmp_path / "pre", tuning_mode="ft", num_train_epochs=8,
                     per_device_train_batch_size=16, learning_rate=0.05), train_dataset=rows)  # fmt: skip
    pre.train()
    trained = pre.model  # the trainer tunes a copy: the input model is never changed
    trained.config.output_hidden_states = True
    baseline = copy.deepcopy(trained)
    args = fst_args(tmp_path / "auto", fst_alpha="auto", max_accuracy_drop=0.001, learning_rate=1e-9,
                    num_train_epochs=1, per_device_train_batch_size=16)  # fmt: skip
    trainer = FSTTrainer(model=trained, args=args, train_dataset=rows)
    search = search_fst_alpha(trainer, baseline, strengths=(1.0, 2.0, 4.0)).to_dict()

    _, held = stratified_split(np.array([r["labels"] for r in rows]), 0.2, seed=7)
    baseline.eval()
    with torch.no_grad():
        logits = baseline(pixel_values=torch.stack([rows[i]["pixel_values"] for i in held])).logits
    expected = float(np.mean(logits.argmax(-1).numpy() == np.array([rows[i]["labels"] for i in held])))
    assert expected >= 0.8 and search["baseline_accuracy"] == pytest.approx(expected, abs=1e-9)
    assert [t["fst_alpha_normalized"] for t in search["tries"]] == [2.0, 1.0]
    assert all(t["validation_accuracy"] < expected - 0.001 and not t["within_budget"] for t in search["tries"])
    assert (
        search["budget_met"] is False
        and search["chosen"] == 1.0
        and search["chosen_alpha"] == pytest.approx(1.0 / search["head_norm_squared"])
    )
