"""The study of the search's estimate: held-out drop against test drop, and scoring without the tuning images."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, Features, Image
from PIL import Image as PILImage
from test_render import load_script

from hf_fst.attacks import backdoor_test_rows, backdoor_test_set, get_attack
from hf_fst.benchmark.heldout import estimate, estimate_table, held_out_drop, reference_for
from hf_fst.benchmark.records import replace_section
from hf_fst.benchmark.tensors import EvaluationSets


def search(baseline, tries, chosen, folds=1):
    return {"baseline_accuracy": baseline, "chosen": chosen, "folds": folds,
            "tries": [{"fst_alpha_normalized": s, "validation_accuracy": a} for s, a in tries]}  # fmt: skip


def run(seed, before, after, held_baseline, held_chosen, *, source="test", asr=0.1, budget=0.02, **extra):
    return {"dataset": "gtsrb", "attack": "sig", "poison_rate": 0.005, "seed": seed, "tuning_source": source,
            "max_accuracy_drop": budget, "before_clean_accuracy": before, "clean_accuracy": after,
            "attack_success_rate": asr, "fst_alpha_normalized": 2.0,
            "fst_alpha_search": search(held_baseline, [(8.0, 0.5), (2.0, held_chosen)], 2.0), **extra}  # fmt: skip


def test_the_estimate_is_the_drop_of_the_strength_the_search_kept():
    found = search(0.95, [(2.0, 0.90), (0.5, 0.935), (0.25, 0.94)], 0.5)
    assert held_out_drop(found) == pytest.approx(0.015)  # not the first try's, not the last's
    record = {"fst_alpha_search": found, "before_clean_accuracy": 0.86, "clean_accuracy": 0.85}
    assert estimate(record) == pytest.approx({"held_out_drop": 0.015, "test_drop": 0.01, "overstatement": 0.005})
    with pytest.raises(ValueError, match="chosen strength 4.0"):
        held_out_drop({**found, "chosen": 4.0})


def test_table_of_the_estimate_by_tuning_source():
    rows = [
        run(0, 0.96, 0.93, 1.0, 0.99),  # test drop exactly budget + 1 point: counted within
        run(1, 0.96, 0.92, 1.0, 0.98, asr=0.3),  # 4 points: over
        run(0, 0.96, 0.95, 0.97, 0.95, source="train", asr=0.0),
    ]
    assert estimate_table(rows)[2:] == [
        "| gtsrb | test split | 2 | 1.5 ± 0.7 | 3.5 ± 0.7 | -2.0 ± 0.0 | 1 of 2 | 20.0 ± 14.1 |",
        "| gtsrb | train split | 1 | 2.0 | 1.0 | 1.0 | 1 of 1 | 0.0 |",
    ]


def test_reference_is_fsts_search_on_training_images_of_the_same_model():
    grid = {**run(1, 0.86, 0.84, 0.95, 0.93, source=None), "dataset": "cifar10", "attack": "lc",
            "poison_rate": 0.01, "tuning_mode": "fst"}  # fmt: skip
    beside = {**grid, "tuning_mode": None, "variant": "fst", "strength": "auto", "clean_accuracy": 0.845}
    records = [
        {**grid, "fst_alpha_search": None},  # the paper's FST: no search
        {**grid, "max_accuracy_drop": 0.05},  # another budget
        {**grid, "tuning_mode": None, "variant": "fst-kd", "strength": "auto"},  # another method
        {**grid, "seed": 2},
        grid,
    ]
    assert reference_for(records, "cifar10", "lc", 0.01, 1, 0.02) is grid
    assert reference_for([*records, beside], "cifar10", "lc", 0.01, 1, 0.02, 0.86) is beside  # the later run
    assert reference_for(records, "cifar10", "lc", 0.01, 1, 0.02, 0.8633) is None  # another build of the model
    assert reference_for(records, "cifar10", "sig", 0.01, 1, 0.02) is None
    assert reference_for(records[:4], "cifar10", "lc", 0.01, 1, 0.02) is None


def test_scoring_leaves_out_the_tuning_images_and_the_backdoor_rows_made_from_them():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(12, 8, 8, 3), dtype=np.uint8)
    labels = [0, 1, 2, 0, 1, 2, 2, 0, 1, 1, 0, 2]
    features = Features({"image": Image(), "label": ClassLabel(num_classes=3)})
    test = Dataset.from_dict({"image": [PILImage.fromarray(p) for p in pixels], "label": labels}, features=features)
    attack = get_attack("blended", target_label=0)
    backdoor = backdoor_test_set(test, attack)
    source = backdoor_test_rows(np.array(labels), attack)
    assert source.tolist() == [1, 2, 4, 5, 6, 8, 9, 11]
    assert backdoor["original_label"] == [labels[i] for i in source]
    every = get_attack("blended", label_mode="all-to-all")
    assert backdoor_test_rows(labels, every).tolist() == list(range(12))
    assert backdoor_test_set(test, every)["original_label"] == labels

    images = torch.from_numpy(pixels).permute(0, 3, 1, 2)
    backdoor_images = torch.arange(len(source))  # stand-ins that name their row
    sets = EvaluationSets(images, np.array(labels), backdoor_images, np.zeros(len(source), dtype=int),
                          np.array(backdoor["original_label"]))  # fmt: skip
    tuned_on = np.array([0, 2, 5, 9])
    scored = sets.excluding(tuned_on, np.flatnonzero(np.isin(source, tuned_on)))
    kept = [i for i in range(12) if i not in tuned_on]
    assert torch.equal(scored.clean_images, images[kept]) and scored.clean_labels.tolist() == [labels[i] for i in kept]
    assert scored.backdoor_images.tolist() == [0, 2, 4, 5, 7]  # the rows of test images 1, 4, 6, 8, 11
    assert scored.backdoor_original_labels.tolist() == [labels[i] for i in (1, 4, 6, 8, 11)]
    assert len(sets.clean_labels) == 12 and len(sets.backdoor_labels) == 8  # the full sets are left as they were


def test_study_renders_each_run_beside_the_run_on_training_images(tmp_path, monkeypatch):
    study = load_script("unseen_tuning")
    (tmp_path / "unseen").mkdir()
    (tmp_path / "strong").mkdir()
    unseen = run(1, 0.96, 0.93, 0.97, 0.96, full_test_before_clean_accuracy=0.9671)
    seen = {**run(1, 0.9671, 0.94, 1.0, 0.99, source=None, asr=0.02), "variant": "fst", "strength": "auto"}
    (tmp_path / "unseen" / "gtsrb.jsonl").write_text(json.dumps(unseen) + "\n")
    (tmp_path / "strong" / "gtsrb.jsonl").write_text(json.dumps(seen) + "\n")
    (tmp_path / "BENCHMARKS.md").write_text("a\n<!-- unseen-tuning:begin -->\nold\n<!-- unseen-tuning:end -->\nb\n")
    monkeypatch.setattr(study, "RESULTS", tmp_path / "unseen")
    monkeypatch.setattr(study, "REFERENCES", [tmp_path / "strong"])
    monkeypatch.setattr(study, "ROOT", tmp_path)
    study.render(None)
    document = (tmp_path / "BENCHMARKS.md").read_text()
    assert "old" not in document and document.startswith("a\n<!-- unseen-tuning:begin -->")
    assert "| gtsrb | test split | 1 | 1.0 | 3.0 | -2.0 | 1 of 1 | 10.0 |" in document
    assert "| gtsrb | train split | 1 | 1.0 | 2.7 | -1.7 | 1 of 1 | 2.0 |" in document
    assert "| gtsrb sig 0.005 s1 | 2, 1.0 / 2.7, 2.0% | 2, 1.0 / 3.0, 10.0% |" in document
    assert document.endswith("<!-- unseen-tuning:end -->\nb\n")

    (tmp_path / "strong" / "gtsrb.jsonl").write_text(json.dumps({**seen, "seed": 2}) + "\n")
    with pytest.raises(SystemExit, match="no training-split run for sig seed 1"):
        study.render(None)


def test_rendered_section_replaces_only_the_text_between_its_markers(tmp_path):
    path = tmp_path / "doc.md"
    path.write_text("intro\n<!-- x:begin -->\nold\n<!-- x:end -->\nhand-written\n")
    assert replace_section(path, ("<!-- x:begin -->", "<!-- x:end -->"), "new")
    assert path.read_text() == "intro\n<!-- x:begin -->\nnew\n<!-- x:end -->\nhand-written\n"
    assert not replace_section(path, ("<!-- y:begin -->", "<!-- y:end -->"), "other")  # no markers: untouched
    assert path.read_text() == "intro\n<!-- x:begin -->\nnew\n<!-- x:end -->\nhand-written\n"
