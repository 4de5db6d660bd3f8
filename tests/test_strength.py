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
    automatic_folds,
    bisect_strengths,
    dataset_labels,
    describe_search,
    evaluation_view,
    search_fst_alpha,
    stratified_folds,
    stratified_split,
    strength_record,
)


def _separable_rows(n: int, seed: int, spread: float = 4.0) -> list[dict]:
    """Rows a tiny model learns: the class (0-4) moves the first channel by `spread` per class, centred on 0."""
    generator = torch.Generator().manual_seed(seed)
    return [{"pixel_values": torch.randn(3, 16, 16, generator=generator) + torch.tensor([spread * (i % 5) - 2 * spread, 0, 0])[:, None, None],
             "labels": i % 5} for i in range(n)]  # fmt: skip


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
    # what all_results.json and grid records say about the strength: both units, and no search for a number
    record = strength_record(raw)
    assert (
        set(record) == {"fst_alpha", "fst_alpha_normalized", "fst_alpha_search"} and record["fst_alpha_search"] is None
    )
    assert record["fst_alpha"] == pytest.approx(0.3) and record["fst_alpha_normalized"] == pytest.approx(0.3 * norm2)
    assert strength_record(scaled)["fst_alpha"] == pytest.approx(0.3 / norm2, rel=1e-5)
    for mode in ("ft", "ft-init", "lp", "fe-tuning"):  # no strength outside FST, even with one configured
        other = FSTTrainer(model=model, args=fst_args(tmp_path, tuning_mode=mode, fst_alpha=0.3))
        assert strength_record(other) == {"fst_alpha": None, "fst_alpha_normalized": None, "fst_alpha_search": None}


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
        ("max_accuracy_drop", "0.02", r"^max_accuracy_drop='0\.02' must be a fraction"),  # a quoted YAML value
        ("fst_validation_fraction", 1.0, r"^fst_validation_fraction=1\.0 must be a fraction"),
        ("fst_validation_folds", 0, r"^fst_validation_folds=0 must be an integer >= 1; pass e\.g\. "),
        ("fst_validation_folds", 2.0, r"^fst_validation_folds=2\.0 must be an integer"),
        ("fst_validation_folds", True, r"^fst_validation_folds=True must be an integer"),
        (
            "fst_validation_folds",
            6,
            r"^fst_validation_folds=6 needs 6 disjoint held-out parts of "
            r"fst_validation_fraction=0\.2; pass at most 5 folds or a smaller fraction",
        ),
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


def test_a_blank_head_name_means_find_the_head(tmp_path):
    # A recipe or YAML field left empty is "no name given", not a layer called "  ".
    assert FSTConfig(output_dir=str(tmp_path), head_name="  ").head_name is None
    assert FSTConfig(output_dir=str(tmp_path), head_name="classifier").head_name == "classifier"


def test_folds_fit_the_fraction(tmp_path):
    assert FSTConfig(output_dir=str(tmp_path), fst_validation_folds=5).fst_validation_folds == 5  # 5 x 0.2 = 1
    assert FSTConfig(output_dir=str(tmp_path), fst_validation_folds=4, fst_validation_fraction=0.25)
    with pytest.raises(ValueError, match=r"^fst_validation_folds=5 needs .* pass at most 4 folds"):
        FSTConfig(output_dir=str(tmp_path), fst_validation_folds=5, fst_validation_fraction=0.25)
    (config,) = recipe_parser([FSTConfig]).parse(["--output_dir", str(tmp_path), "--fst_validation_folds", "3"])
    assert config.fst_validation_folds == 3 and FSTConfig(output_dir=str(tmp_path)).fst_validation_folds is None


def test_stratified_folds_hold_out_disjoint_parts_of_every_class():
    labels = np.repeat(np.arange(4), [10, 5, 1, 2])
    folds = stratified_folds(labels, 0.2, seed=3, folds=5)
    assert len(folds) == 5
    held_parts = [held for _, held in folds]
    for keep, held in folds:  # each fold: a part held out, the rest kept
        assert np.array_equal(keep, np.setdiff1d(np.arange(18), held)) and np.array_equal(held, np.sort(held))
    everything = np.concatenate(held_parts)
    assert len(np.unique(everything)) == len(everything)  # disjoint
    # Class 0 (10 images): 2 per fold, all held out once; class 1 (5): 1 per fold; the lone class-2 image is never
    # held out; class 3 (2 images): 1 in each of the first two folds, so a fold never holds out a class's last one.
    assert [[int(np.sum(labels[h] == c)) for c in range(4)] for h in held_parts] == [
        [2, 1, 0, 1], [2, 1, 0, 1], [2, 1, 0, 0], [2, 1, 0, 0], [2, 1, 0, 0]
    ]  # fmt: skip
    # One fold is the single split, so folds=1 changes nothing; the folds are seeded.
    keep, held = stratified_split(labels, 0.2, seed=3)
    assert np.array_equal(folds[0][1], held) and np.array_equal(folds[0][0], keep)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(folds, stratified_folds(labels, 0.2, 3, 5), strict=True))
    assert not np.array_equal(folds[1][1], stratified_folds(labels, 0.2, seed=4, folds=5)[1][1])
    for bad in (0, 6):
        with pytest.raises(ValueError, match=rf"^folds={bad} with fraction=0\.2 do not fit"):
            stratified_folds(labels, 0.2, seed=3, folds=bad)


@pytest.mark.parametrize(
    ("size", "classes", "fraction", "folds"),
    [
        (1000, 10, 0.2, 1),  # 200 held out by one fold: enough
        (1000, 11, 0.2, 1),  # per-class rounding holds out 198 here; the nominal 200 decides, so still one fold
        (970, 10, 0.2, 2),  # 194 fall short
        (269, 10, 0.2, 4),  # a demo-sized tuning set: 53.8 a fold, 4 x 53.8 >= 200
        (100, 10, 0.2, 5),  # every image held out once is still under 200: all five folds
        (100, 10, 0.5, 2),  # a larger fraction allows fewer folds
        (10, 5, 0.2, 2),  # two images a class: only two folds hold out anything
        (2, 1, 0.2, 2),  # one image in each of two folds still counts as a fold
        (100, 10, 0.6, 1),  # a fraction over one half leaves room for one fold only
    ],
)
def test_unset_folds_judge_on_at_least_200_images_when_the_data_allow(size, classes, fraction, folds):
    labels = np.arange(size) % classes
    assert automatic_folds(labels, fraction, seed=0) == folds
    parts = stratified_folds(labels, fraction, seed=0, folds=folds)
    assert all(len(held) for _, held in parts)


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
    # one held-out part unless a test asks for more
    settings = {"fst_validation_folds": 1, "num_train_epochs": 2, "per_device_train_batch_size": 16, **overrides}
    args = fst_args(tmp_path, fst_alpha="auto", **settings)
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
    assert strength_record(trainer) == {
        "fst_alpha": pytest.approx(search["chosen_alpha"]), "fst_alpha_normalized": pytest.approx(search["chosen"]),
        "fst_alpha_search": search,
    }  # fmt: skip
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
    pooled = dict(search, validation_size=216, folds=2, held_out_augmented=True)
    assert describe_search(pooled).startswith(
        "alpha was chosen without attack knowledge (`fst_alpha=auto`): the strongest normalised shift whose accuracy "
        "on 216 held-out clean tuning images (2 disjoint parts, each candidate tuned once per part), seen through the "
        "training pipeline with any augmentation it applies, stayed within 2 points of the input model's (92.0%). "
    )
    assert describe_search(dict(pooled, folds=1, held_out_augmented=False)) == describe_search(
        dict(search, validation_size=216)
    )  # one part and no augmentation (or a record written before either was recorded) add no words
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

    rows = _separable_rows(60, seed=3, spread=1.0)  # learnable rows: the class shifts the first channel
    common = {"num_train_epochs": 4, "per_device_train_batch_size": 16, "learning_rate": 0.05}
    args = fst_args(tmp_path / "auto", fst_alpha="auto", fst_validation_folds=1, **common)
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
        args.max_steps = 16  # the final run's steps: 4 epochs of 60 rows in batches of 16; the part has 48 rows
        by_hand = FSTTrainer(model=model(), args=args, train_dataset=[rows[i] for i in keep])
        by_hand.train()
        assert t["validation_accuracy"] == pytest.approx(accuracy(by_hand.model), abs=1e-9)
        assert t["fst_alpha"] == pytest.approx(t["fst_alpha_normalized"] / search["head_norm_squared"], rel=1e-9)
    # The held-out accuracies differ between strengths: the candidates really trained with their strength.
    assert len({t["validation_accuracy"] for t in search["tries"]}) > 1
    # The final run is a plain normalised FST run at the chosen strength on all the rows, from a re-drawn head.
    args = fst_args(tmp_path / "final-by-hand", fst_alpha=search["chosen"], normalize_fst_alpha=True, **common)
    final = FSTTrainer(model=model(), args=args, train_dataset=rows)
    final.train()
    for (name, a), b in zip(trainer.model.state_dict().items(), final.model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, msg=name)


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


def test_labels_of_a_dataset_that_only_looks_like_a_table_are_read_row_by_row():
    class Named(list):  # a torch-style dataset that advertises its columns but has no `with_format`
        column_names = ["pixel_values", "labels"]

    rows = Named({"pixel_values": torch.zeros(1), "labels": y} for y in (2, 0, 1))
    np.testing.assert_array_equal(dataset_labels(rows, "labels"), [2, 0, 1])


def test_index_arrays_stay_integer_even_when_nothing_can_be_held_out():
    # Every class a singleton: no held-out image, and the tuning part still indexes the labels.
    keep, held = stratified_split(np.array([3, 1, 2]), 0.2, seed=0)
    assert held.size == 0 and held.dtype.kind == "i" and keep.dtype.kind == "i"
    np.testing.assert_array_equal(np.array([3, 1, 2])[keep], [3, 1, 2])


def test_unset_folds_count_the_nominal_images_even_below_one_a_fold():
    # 500 images at fraction 0.001: nominally half an image a fold, so 400 folds would reach 200 images; the
    # stratified parts (one image of each of the two classes a fold) run out after 250 folds.
    labels = np.repeat([0, 1], 250)
    assert automatic_folds(labels, 0.001, seed=0) == 250


def test_two_images_are_enough_for_auto_one_to_tune_on_and_one_to_judge(tmp_path):
    rows = random_image_rows(2, seed=5)
    rows[1]["labels"] = rows[0]["labels"]
    _, trainer = _auto(tmp_path, rows, fst_validation_folds=None, max_steps=3)
    trainer.train()
    search = trainer.fst_alpha_search
    # two folds, each tuning on one image and judging on the other, for the user's max_steps
    assert search.folds == 2 and search.validation_size == 2 and len(search.tries) == 3 and search.steps == 3
    assert trainer.state.global_step == 3


def test_auto_reads_the_first_label_name_when_predictions_carry_several(tmp_path):
    """With two label names the Trainer's predictions carry a tuple of label arrays; the search scores against the
    first (the one FSTTrainer trains on), so a second column of other ids changes nothing."""
    rows = _separable_rows(60, seed=2)
    tagged = [{**row, "row_id": (row["labels"] + 1 + i) % 5} for i, row in enumerate(rows)]
    _, plain = _auto(tmp_path / "plain", rows, learning_rate=0.05)
    _, named = _auto(tmp_path / "named", tagged, learning_rate=0.05, label_names=["labels", "row_id"])
    plain.train()
    named.train()
    first, second = plain.fst_alpha_search.to_dict(), named.fst_alpha_search.to_dict()
    assert first == second and max(t["validation_accuracy"] for t in first["tries"]) >= 0.5


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

    args = fst_args(tmp_path, fst_alpha="auto", num_train_epochs=4, per_device_train_batch_size=12,
                    fst_validation_folds=1)  # fmt: skip
    trainer = FSTTrainer(model=tiny_resnet(), args=args, train_dataset=rows, data_collator=collator,
                         compute_loss_func=loss_func)  # fmt: skip
    trainer.train()
    assert len(trainer.fst_alpha_search.tries) == 3
    # 12 held-out and 48 tuning rows: the reference predicts 12; the final run takes 4 epochs of 5 batches of 12
    # (20 steps, 240 rows); each candidate takes the same 20 steps over its 48 rows (5 epochs of 4 batches: 240 rows,
    # not the 4 x 48 = 192 of equal epochs) and predicts 12.
    assert sum(seen) == 12 + 3 * (240 + 12) + 240
    assert trainer.fst_alpha_search.steps == 20
    assert sum(losses) == sum(seen)  # every batch, training and held-out evaluation alike, through the user's loss


def test_no_strength_within_the_budget_keeps_the_weakest_tried_and_reads_tuple_predictions(tmp_path, caplog):
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
                    num_train_epochs=1, per_device_train_batch_size=16, fst_validation_folds=1)  # fmt: skip
    trainer = FSTTrainer(model=trained, args=args, train_dataset=rows)
    with caplog.at_level("WARNING", logger="hf_fst.tuning.search"):
        search = search_fst_alpha(trainer, baseline, strengths=(1.0, 2.0, 4.0)).to_dict()
    lost = 100 * (search["baseline_accuracy"] - search["tries"][-1]["validation_accuracy"])
    assert [r.getMessage() for r in caplog.records] == [
        "fst_alpha=auto: no strength kept held-out accuracy within 0.1 points of the input model's (the weakest, 1, "
        f"lost {lost:.1f}); tuning with it anyway: expect a larger drop, or give more clean data or a larger budget"
    ]

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


def test_auto_with_folds_pools_every_fold_by_hand(tmp_path):
    """With two folds, each candidate is tuned once per fold (for the final run's steps) and scored on both
    held-out parts pooled; the input model's accuracy is pooled over the same images."""
    rows = _separable_rows(60, seed=3, spread=1.0)
    common = {"num_train_epochs": 2, "per_device_train_batch_size": 16, "learning_rate": 0.05}
    trainer = FSTTrainer(model=tiny_resnet(), args=fst_args(tmp_path / "auto", fst_alpha="auto",
                         fst_validation_folds=2, **common), train_dataset=rows)  # fmt: skip
    trainer.train()
    search = trainer.fst_alpha_search.to_dict()
    folds = stratified_folds(np.array([r["labels"] for r in rows]), 0.2, seed=7, folds=2)
    assert search["folds"] == 2 and search["validation_size"] == 20 and search["steps"] == 8  # 2 epochs x 4 batches

    def correct(model, held):
        model.eval()
        with torch.no_grad():
            logits = model(pixel_values=torch.stack([rows[i]["pixel_values"] for i in held])).logits
        return int(np.sum(logits.argmax(-1).numpy() == np.array([rows[i]["labels"] for i in held])))

    assert search["baseline_accuracy"] == pytest.approx(sum(correct(tiny_resnet(), h) for _, h in folds) / 20)
    for t in search["tries"]:
        total = 0
        for k, (keep, held) in enumerate(folds):
            args = fst_args(tmp_path / f"hand-{t['fst_alpha_normalized']}-{k}", fst_alpha=t["fst_alpha_normalized"],
                            normalize_fst_alpha=True, max_steps=8, **common)  # fmt: skip
            by_hand = FSTTrainer(model=tiny_resnet(), args=args, train_dataset=[rows[i] for i in keep])
            by_hand.train()
            total += correct(by_hand.model, held)
        assert t["validation_accuracy"] == pytest.approx(total / 20, abs=1e-9)


def test_unset_folds_reach_the_search(tmp_path):
    rows = random_image_rows(60)
    CountingTrainer.built = 0
    _, trainer = _auto(tmp_path, rows, fst_validation_folds=None, num_train_epochs=1)
    trainer.train()
    search = trainer.fst_alpha_search
    parts = stratified_folds(np.array([r["labels"] for r in rows]), 0.2, seed=7, folds=5)
    # 60 images hold out about 12 a fold, so every fold is used (57 in all < 200): 3 candidates x 5 folds, the
    # reference, the run
    assert search.folds == 5 and search.validation_size == sum(len(held) for _, held in parts) == 57
    assert CountingTrainer.built == 1 + 3 * 5 + 1


def _image_dataset(n: int):
    from datasets import ClassLabel, Dataset, Features, Image

    pixels = np.random.default_rng(0).integers(0, 256, (n, 16, 16, 3), dtype=np.uint8)
    features = Features({"img": Image(), "label": ClassLabel(num_classes=5)})
    return Dataset.from_dict({"img": list(pixels), "label": [i % 5 for i in range(n)]}, features=features)


def test_held_out_images_are_judged_without_training_augmentation(tmp_path):
    from hf_fst.transforms import ImageClassificationTransform, collate_image_batch

    data = _image_dataset(40)
    augment = ImageClassificationTransform("img", "label", train=True, crop_padding=6)
    plain = ImageClassificationTransform("img", "label", train=False)
    view, switched = evaluation_view(data.with_transform(augment))
    assert switched and augment.train  # a copy was switched off, not the caller's transform
    torch.testing.assert_close(view[:8]["pixel_values"], data.with_transform(plain)[:8]["pixel_values"])
    assert not torch.allclose(data.with_transform(augment)[:8]["pixel_values"], view[:8]["pixel_values"])
    # the format's columns and output_all_columns carry over to the view
    narrow = data.add_column("note", ["x"] * 40).with_transform(
        augment, columns=["img", "label"], output_all_columns=True
    )
    narrow_view, _ = evaluation_view(narrow)
    assert narrow_view.format["columns"] == ["img", "label"] and narrow_view.format["output_all_columns"] is True
    assert narrow_view[0]["note"] == "x" and "pixel_values" in narrow_view[0]
    custom = data.with_transform(lambda batch: plain(batch))  # a transform hf-fst cannot switch is kept
    assert evaluation_view(custom) == (custom, False) and evaluation_view(data) == (data, False)

    batches = []

    def collator(rows):  # records what every model is given: the first batch is the input model's held-out one
        batches.append(collate_image_batch(rows))
        return batches[-1]

    args = fst_args(tmp_path, fst_alpha="auto", num_train_epochs=1, per_device_train_batch_size=16,
                    per_device_eval_batch_size=16, remove_unused_columns=False, fst_validation_folds=1)  # fmt: skip
    trainer = FSTTrainer(model=tiny_resnet(), args=args, train_dataset=data.with_transform(augment),
                         data_collator=collator)  # fmt: skip
    trainer.train()
    search = trainer.fst_alpha_search
    _, held = stratified_split(np.array(data["label"]), 0.2, seed=7)
    expected = data.with_transform(plain)[held.tolist()]
    torch.testing.assert_close(batches[0]["pixel_values"], expected["pixel_values"])
    with torch.no_grad():
        logits = tiny_resnet()(pixel_values=expected["pixel_values"]).logits
    assert search.held_out_augmented is False and search.validation_size == len(held) == 10
    assert search.baseline_accuracy == pytest.approx(float(np.mean(logits.argmax(-1).numpy() == held % 5)))


def test_a_custom_random_transform_gives_every_model_the_same_draws(tmp_path):
    from hf_fst.tuning.search import _correct

    data = _image_dataset(200).with_transform(
        lambda batch: {"pixel_values": torch.randn(len(batch["label"]), 3, 16, 16) * 3,
                       "labels": torch.tensor(batch["label"])})  # fmt: skip
    trainer = FSTTrainer(model=tiny_resnet(), args=fst_args(tmp_path, remove_unused_columns=False))
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = _correct(trainer, data, seed=5)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's random stream is left where it was
    assert _correct(trainer, data, seed=5) == first  # same draws for every model judged
    assert len({_correct(trainer, data, seed=s) for s in range(6)}) > 1  # and the draws do come from the seed


class _NoisyCollator:
    """Adds noise to every batch; its `without_augmentation()` copy does not, and both count their batches."""

    def __init__(self, noisy: bool = True) -> None:
        self.noisy, self.rows = noisy, []

    def without_augmentation(self) -> _NoisyCollator:
        self.plain = _NoisyCollator(noisy=False)
        return self.plain

    def __call__(self, rows):
        self.rows.append(len(rows))
        pixels = torch.stack([r["pixel_values"] for r in rows])
        return {"pixel_values": pixels + 5 * torch.randn_like(pixels) if self.noisy else pixels,
                "labels": torch.tensor([r["labels"] for r in rows])}  # fmt: skip


def test_a_collator_that_can_switch_augmentation_off_batches_the_held_out_images(tmp_path):
    rows, collator = random_image_rows(60), _NoisyCollator()
    args = fst_args(tmp_path, fst_alpha="auto", num_train_epochs=4, per_device_train_batch_size=12,
                    per_device_eval_batch_size=12, fst_validation_folds=1)  # fmt: skip
    trainer = FSTTrainer(model=tiny_resnet(), args=args, train_dataset=rows, data_collator=collator)
    trainer.train()
    search = trainer.fst_alpha_search
    # The plain copy collated the held-out part for the input model and the 3 candidates; the noisy one trained.
    assert collator.plain.rows == [search.validation_size] * 4 and search.held_out_augmented is False
    assert sum(collator.rows) == 3 * 240 + 240  # 3 candidates x 20 steps of 12 over 48 rows, then the final run
    _, held = stratified_split(np.array([r["labels"] for r in rows]), 0.2, seed=7)
    with torch.no_grad():
        logits = tiny_resnet()(pixel_values=torch.stack([rows[i]["pixel_values"] for i in held])).logits
    expected = float(np.mean(logits.argmax(-1).numpy() == np.array([rows[i]["labels"] for i in held])))
    assert search.baseline_accuracy == pytest.approx(expected)
