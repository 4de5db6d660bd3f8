"""The BENCHMARKS.md renderer: numbers come from the records, the claim verdicts follow the thresholds."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def load_script(name: str):
    """A benchmark script as a module (registered first, so that its dataclasses resolve)."""
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def render():
    return load_script("render")


def record(mode, seed, acc, asr, *, rate=0.01, alpha=None, count=1000, before=(0.70, 0.90)):
    return {
        "dataset": "cifar10", "model": "resnet-s", "attack": "badnet", "poison_rate": rate, "seed": seed,
        "tuning_mode": mode, "fst_alpha": alpha if alpha is not None else (0.2 if mode == "fst" else None),
        "num_tuning_samples": count, "tuning_epochs": 10, "tuning_learning_rate": 0.01, "tuning_augment": True,
        "project_head_norm": None, "backdoor_epochs": 8, "backdoor_learning_rate": 0.05, "num_train_images": None,
        "backdoor_augment": False, "before_clean_accuracy": before[0], "before_attack_success_rate": before[1],
        "before_robust_accuracy": 0.05,
        "clean_accuracy": acc, "attack_success_rate": asr, "robust_accuracy": 1 - asr, "tuning_seconds": 1.0,
    }  # fmt: skip


def test_tables_and_claim_come_from_records(render, tmp_path):
    records = [
        record("ft", 0, 0.69, 0.80), record("ft", 1, 0.71, 0.60),
        record("fst", 0, 0.69, 0.02), record("fst", 1, 0.70, 0.04),  # holds: ASR 3%, C-Acc -0.5 points
        record("ft", 0, 0.69, 0.80, rate=0.005), record("fst", 0, 0.60, 0.01, rate=0.005),  # C-Acc -10: fails
    ]  # fmt: skip
    text = render.render(records, tmp_path / "plots")
    assert text.startswith(render.BEGIN) and text.endswith(render.END)
    assert "| BadNet | 1% | 2 | 90.0 ± 0.0 | 70.0 ± 14.1 | 3.0 ± 1.4 |" in text  # ASR: backdoored, FT, FST
    assert "| BadNet | 1% | 2 | 70.0 ± 0.0 | 70.0 ± 1.4 | 69.5 ± 0.7 |" in text  # C-Acc
    assert "| BadNet | 0.5% | 1 | 5.0 | 20.0 | 99.0 |" in text  # RA
    assert "| BadNet | 1% | 90.0 ± 0.0 | 70.0 ± 14.1 | - | 3.0 ± 1.4 | -0.5 ± 0.7 | yes | yes | holds |" in text
    assert "| BadNet | 0.5% | 90.0 | 80.0 | - | 1.0 | -10.0 | yes | no | does not hold |" in text
    failures = text.split("Cells where the claim")[1]
    assert "BadNet 0.5%" in failures and "BadNet 1%" not in failures
    assert (tmp_path / "plots" / "modes-cifar10-resnet-s.png").stat().st_size > 10_000
    # A cell whose backdoored model has ASR under 20% has nothing to remove: not counted as a failure.
    weak = [record("fst", 0, 0.5, 0.04, before=(0.7, 0.1))]
    text = render.render(weak, tmp_path / "plots")
    assert "| no backdoor to remove |" in text and "does not hold" not in text


def test_sweeps_need_four_values_and_render_tables(render, tmp_path):
    alphas = [0.01, 0.05, 0.1, 0.2]
    records = [record("fst", s, 0.7 - a, 0.5 - a, alpha=a) for a in alphas for s in (0, 1)]
    text = render.render(records, tmp_path / "plots")
    assert "Alpha sweep" in text and "| FST | 0.05 | 2 | 65.0 ± 0.0 | 45.0 ± 0.0 |" in text
    assert "Tuning-set-size sweep" not in text  # one size only
    assert (tmp_path / "plots" / "fst_alpha-cifar10-resnet-s-badnet-0.01.png").is_file()
    # Three values are not a sweep.
    assert "Alpha sweep" not in render.render(records[:6], tmp_path / "plots")


def test_feature_shift_numbers():
    module = load_script("feature_shift")
    rng = np.random.default_rng(0)
    centres = np.eye(3) * 10
    labels = np.repeat([0, 1, 2], 50)
    clean = centres[labels] + rng.normal(size=(150, 3))
    # Triggered features sitting on the target class (backdoored) against features next to their own classes.
    on_target = module.shift_numbers(clean, labels, centres[[2] * 40] + rng.normal(size=(40, 3)), target=2)
    assert on_target["poisoned_nearest_target"] == 1.0
    shifted = module.shift_numbers(clean, labels, centres[[0, 1] * 20] + rng.normal(size=(40, 3)), target=2)
    assert shifted["poisoned_nearest_target"] == 0.0
    # Triggered features far from every clean one are separable; drawn like clean ones they are not.
    far = module.shift_numbers(clean, labels, rng.normal(size=(40, 3)) + 30, target=2)
    assert far["triggered_vs_clean_separability"] > 0.95
    alike = module.shift_numbers(clean, labels, centres[rng.integers(0, 3, 150)] + rng.normal(size=(150, 3)), 2)
    assert alike["triggered_vs_clean_separability"] < 0.65
    assert module.cosine_distance(clean, clean) == pytest.approx(0.0, abs=1e-9)
    assert module.cosine_distance(clean, -clean) == pytest.approx(2.0)


def test_retuning_attack_table(render, tmp_path):
    records = []
    for seed, (asr, pasr) in enumerate([(0.02, 0.60), (0.04, 0.80)]):
        for mode, after, retuned in (("ft", 0.7, 0.9), ("fst", asr, pasr)):
            row = record(mode, seed, 0.7, after)
            row.update(retuning_attack_success_rate=retuned, retuning_clean_accuracy=0.69,
                       before_retuning_attack_success_rate=0.95, before_retuning_clean_accuracy=0.7)  # fmt: skip
            records.append(row)
    text = render.render(records, tmp_path / "plots")
    assert "| BadNet | 1% | 2 | 90.0 ± 0.0 → 95.0 ± 0.0 | 70.0 ± 0.0 → 90.0 ± 0.0 | 3.0 ± 1.4 → 70.0 ± 14.1 |" in text
    assert (tmp_path / "plots" / "retuning-cifar10-resnet-s.png").stat().st_size > 5_000
    assert "Retuning attack" not in render.render([record("ft", 0, 0.7, 0.8)], tmp_path / "plots")


def test_auto_strength_table_sits_beside_paper_fst(render, tmp_path):
    paper = [record("fst", s, 0.69, 0.03) for s in (0, 1)]
    auto = [dict(record("fst", s, 0.695, 0.05 + 0.02 * s, alpha="auto"), max_accuracy_drop=0.02,
                 fst_alpha_normalized=2.0 + s) for s in (0, 1)]  # fmt: skip
    text = render.render(paper + auto, tmp_path / "plots")
    assert "FST within an accuracy budget" in text
    assert "| BadNet | 1% | 2 | 2 | 2.50 | -0.5 ± 0.0 | 6.0 ± 1.4 | - | -1.0 ± 0.0 | 3.0 ± 0.0 |" in text
    assert "| BadNet | 1% | 2 | 90.0 ± 0.0 | 3.0 ± 0.0 |" in text  # the main ASR table keeps paper FST only


def test_attack_strength_table_against_the_clean_base(render, tmp_path):
    base = {"epochs": 30, "learning_rate": 0.05, "seed": 0}
    models = tmp_path / "models"
    kept = models / "cifar10-resnet-s-clean-s0-base-e30-lr0.05-n50000-abc1234-aug"
    kept.mkdir(parents=True)
    (kept / "info.json").write_text('{"clean_accuracy": 0.8}')

    def made(attack, rate, seed, before, mode="lp"):
        return {**record(mode, seed, 0.7, 0.5, rate=rate, before=before), "attack": attack, "base_training": base}

    standard = [
        made("blended", 0.01, 0, (0.79, 0.95), "ft"), made("blended", 0.01, 0, (0.79, 0.95), "fst"),
        made("blended", 0.01, 1, (0.77, 0.93), "ft"),  # one model per seed, however many modes tuned it
    ]  # fmt: skip
    strength = [
        made("badnet", 0.1, 0, (0.75, 0.99)),  # 5 points below the clean base: too costly
        made("sig", 0.1, 0, (0.80, 0.60)),  # learnt, but not to 90%
        made("lf", 0.1, 0, (0.70, 0.50)),  # both
        made("wanet", 0.1, 0, (0.80, 0.10)),  # no backdoor
        made("blended", 0.01, 1, (0.77, 0.93)),  # the same model as a standard record: counted once
    ]
    text = render.render(standard, tmp_path / "plots", strength_records=strength, models_dirs=[models])
    assert "attack strength" in text and "(80.00% C-Acc)" in text
    assert "| Blended | 1% | 2 | 78.0 ± 1.4 | -2.0 ± 1.4 | 94.0 ± 1.4 | 5.0 ± 0.0 | yes |" in text
    assert "| BadNet | 10% | 1 | 75.0 | -5.0 | 99.0 | 5.0 | no (C-Acc cost over 2 points) |" in text
    assert "| SIG | 10% | 1 | 80.0 | +0.0 | 60.0 | 5.0 | no (ASR under 90%) |" in text
    assert "| LF | 10% | 1 | 70.0 | -10.0 | 50.0 | 5.0 | no (ASR under 90%, C-Acc cost over 2 points) |" in text
    assert "| WaNet | 10% | 1 | 80.0 | +0.0 | 10.0 | 5.0 | no backdoor |" in text
    # Without the clean base's training record there is nothing to compare with, so no table.
    assert "attack strength" not in render.render(standard, tmp_path / "plots", strength_records=strength)


def test_variants_compare_with_the_paper_alpha_of_each_data_set():
    variants = load_script("fst_variants")

    def row(dataset, mode, alpha, seed=0, **extra):
        return {"dataset": dataset, "attack": "blended", "poison_rate": 0.01, "seed": seed, "tuning_mode": mode,
                "fst_alpha": alpha, **extra}  # fmt: skip

    records = [
        {**row("gtsrb", None, None), "variant": "fst-kd", "strength": 16.0},
        {**row("cifar10", None, None), "variant": "fst-kd", "strength": 16.0},
    ]
    strong = [
        row("gtsrb", "fst", 0.1),
        row("gtsrb", "fst", 0.2),
        row("gtsrb", "ft", None),  # GTSRB's paper alpha: 0.1
        row("gtsrb", "fst", 0.1, seed=1),  # a seed the variants did not run
        row("gtsrb", "fst", 0.1, normalize_fst_alpha=True),  # a scale-free strength, not the paper's alpha
        row("cifar10", "fst", 0.2),
        row("cifar10", "fst", 0.1),
        row("cifar10", "fst", "auto"),
    ]
    cells = variants.points(records, strong)
    gtsrb, cifar = cells[("gtsrb", "blended", 0.01)], cells[("cifar10", "blended", 0.01)]
    assert [r["fst_alpha"] for r in gtsrb[(variants.PAPER, "paper")]] == [0.1]
    assert [r["fst_alpha"] for r in cifar[(variants.PAPER, "paper")]] == [0.2]
    assert len(gtsrb[("ft", "-")]) == 1 and ("ft", "-") not in cifar
    assert len(gtsrb[("fst-kd", "16")]) == 1


def test_variants_compare_a_rebuilt_model_with_references_tuned_on_it():
    variants = load_script("fst_variants")
    model = {"before_clean_accuracy": 0.97, "before_attack_success_rate": 0.96}
    rebuilt = {"before_clean_accuracy": 0.96, "before_attack_success_rate": 0.96}

    def row(seed, **extra):
        return {"dataset": "gtsrb", "attack": "blended", "poison_rate": 0.01, "seed": seed, **model, **extra}

    grid = [row(0, tuning_mode="fst", fst_alpha=0.1, clean_accuracy=0.91),
            row(1, tuning_mode="fst", fst_alpha=0.1, clean_accuracy=0.92), row(1, tuning_mode="ft", fst_alpha=0.1)]  # fmt: skip
    assert variants.grid_tuned_this_model(grid, "gtsrb", "blended", 0.01, 1, model)
    assert not variants.grid_tuned_this_model(grid, "gtsrb", "blended", 0.01, 1, rebuilt)  # another build
    assert not variants.grid_tuned_this_model(grid, "gtsrb", "blended", 0.01, 2, model)  # a seed the grid lacks
    assert not variants.grid_tuned_this_model(grid, "gtsrb", "sig", 0.01, 1, model)
    scale_free = [row(1, tuning_mode="fst", fst_alpha=0.1, normalize_fst_alpha=True)]
    assert not variants.grid_tuned_this_model(scale_free, "gtsrb", "blended", 0.01, 1, model)
    assert not variants.grid_tuned_this_model([row(1, tuning_mode="fst", fst_alpha=0.2)], "gtsrb", "blended", 0.01, 1,
                                              model)  # fmt: skip

    # Seed 0 rebuilt: its paper FST and FT were tuned beside the variants and replace the grid's; seed 1 uses the grid's.
    records = [row(0, variant="fst-kd", strength=16.0), row(1, variant="fst-kd", strength=16.0),
               row(0, variant=variants.PAPER, strength=None, clean_accuracy=0.95),
               row(0, variant="ft", strength=None)]  # fmt: skip
    cells = variants.points(records, grid)[("gtsrb", "blended", 0.01)]
    assert sorted(cells) == [(variants.PAPER, "paper"), ("fst-kd", "16"), ("ft", "-")]
    paper = sorted(cells[(variants.PAPER, "paper")], key=lambda r: r["seed"])
    assert [(r["seed"], r["clean_accuracy"]) for r in paper] == [(0, 0.95), (1, 0.92)]
    assert [r["seed"] for r in cells[("ft", "-")]] == [0, 1]


def test_variants_plan_strengths_or_one_search_within_a_budget():
    variants = load_script("fst_variants")
    args = variants.argparse.Namespace(variants=["fst", "fst-kd"], strengths=[4.0, 16.0], budget=None)
    done = {("sig", 0.01, 0, "fst-kd", 16.0)}
    assert variants.planned(args, "sig", 0.01, 0, done) == [("fst", 4.0), ("fst-kd", 4.0)]
    assert variants.planned(args, "sig", 0.01, 1, done) == [("fst", 4.0), ("fst-kd", 4.0), ("fst-kd", 16.0)]
    args.budget = 0.02  # one search per variant, whatever the strengths
    assert variants.planned(args, "sig", 0.01, 0, {("sig", 0.01, 0, "fst", "auto")}) == [("fst-kd", "auto")]


def test_variants_within_a_budget_beside_the_grids_search_on_the_same_models():
    variants = load_script("fst_variants")

    def row(seed, acc, asr, s, met, before=0.86, **extra):
        return {"dataset": "cifar10", "attack": "sig", "poison_rate": 0.01, "seed": seed, "max_accuracy_drop": 0.02,
                "before_clean_accuracy": before, "before_attack_success_rate": 0.7, "clean_accuracy": acc,
                "attack_success_rate": asr, "fst_alpha_normalized": s, "fst_alpha_search": {"budget_met": met},
                **extra}  # fmt: skip

    grid = [row(0, 0.84, 0.40, 0.25, False, tuning_mode="fst"), row(1, 0.85, 0.30, 1.0, True, tuning_mode="fst"),
            row(2, 0.80, 0.02, 8.0, True, before=0.85, tuning_mode="fst"),  # another build of seed 2's model
            row(1, 0.85, 0.30, 1.0, True, tuning_mode="fst", max_accuracy_drop=0.05),  # another budget
            {**row(1, 0.80, 0.01, 5.8, True, tuning_mode="fst"), "fst_alpha_search": None}]  # paper FST: no search  # fmt: skip
    auto = [row(0, 0.845, 0.20, 4.0, True, variant="fst-kd"), row(1, 0.855, 0.10, 8.0, True, variant="fst-kd"),
            row(2, 0.85, 0.05, 16.0, True, variant="fst-kd")]  # fmt: skip
    lines = variants.budget_table(auto, grid)
    assert lines[2:] == [
        "| cifar10 sig 0.01 | 2 | 2 | fst (auto) | 0.25, 1 | -1.5 ± 0.7 | 35.0 ± 7.1 | 1 of 2 |",
        "| cifar10 sig 0.01 | 2 | 2 | fst-kd (auto) | 4, 8 | -1.0 ± 0.7 | 15.0 ± 7.1 | 2 of 2 |",
    ]
    assert variants.budget_table(auto[2:], grid) == []  # no seed with both searches on one model: no table
    # FST's own search run beside the variant replaces the grid's on that model.
    beside = [{**row(1, 0.83, 0.05, 2.0, True), "variant": "fst"}]
    assert variants.budget_table(auto + beside, grid)[2:] == [
        "| cifar10 sig 0.01 | 2 | 2 | fst (auto) | 0.25, 2 | -2.5 ± 0.7 | 22.5 ± 24.7 | 1 of 2 |",
        "| cifar10 sig 0.01 | 2 | 2 | fst-kd (auto) | 4, 8 | -1.0 ± 0.7 | 15.0 ± 7.1 | 2 of 2 |",
    ]


def test_variants_strongest_strength_a_budget_buys_on_the_test_split():
    variants = load_script("fst_variants")

    def rows(*pairs):  # (C-Acc after, ASR) per seed, each from 0.86 before
        return [{"seed": i, "before_clean_accuracy": 0.86, "clean_accuracy": acc, "attack_success_rate": asr}
                for i, (acc, asr) in enumerate(pairs)]  # fmt: skip

    cells = {
        ("cifar10", "sig", 0.01): {
            ("fst", "2"): rows((0.845, 0.30)),
            ("fst", "4"): rows((0.83, 0.10), (0.84, 0.20)),  # 2.5 points on average: over a 2-point budget
            ("fst-kd", "8"): rows((0.85, 0.10), (0.84, 0.14)),  # exactly 2 points for one seed, 1.5 on average
            ("fst-kd", "16"): rows((0.82, 0.01)),
            (variants.PAPER, "paper"): rows((0.85, 0.0)),  # not a variant: never chosen
        },
        ("gtsrb", "blended", 0.01): {("fst", "2"): rows((0.83, 0.0))},
    }
    assert variants.affordable_table(cells, 0.02)[2:] == [
        "| cifar10 sig 0.01 | fst | 2 | 1 | -1.5 | 30.0 |",
        "| cifar10 sig 0.01 | fst-kd | 8 | 2 | -1.5 ± 0.7 | 12.0 ± 2.8 |",
        "| gtsrb blended 0.01 | fst | none (s = 2 costs -3.0) | | | |",
    ]
    exact = {("gtsrb", "sig", 0.005): {("fst", "2"): [{"before_clean_accuracy": 0.5, "clean_accuracy": 0.25,
                                                     "attack_success_rate": 0.5}]}}  # fmt: skip
    assert variants.affordable_table(exact, 0.25)[2] == "| gtsrb sig 0.005 | fst | 2 | 1 | -25.0 | 50.0 |"  # the bound
    assert variants.affordable_table(cells, 0.03)[2:4] == [
        "| cifar10 sig 0.01 | fst | 4 | 2 | -2.5 ± 0.7 | 15.0 ± 7.1 |",
        "| cifar10 sig 0.01 | fst-kd | 8 | 2 | -1.5 ± 0.7 | 12.0 ± 2.8 |",
    ]


def test_variants_p_asr_column_and_record_replacement(tmp_path):
    variants = load_script("fst_variants")
    rows = [{"retuning_attack_success_rate": 0.5}, {"retuning_attack_success_rate": 0.7}, {}]
    assert variants.retuned(rows[:2]) == "60.0 ± 14.1"
    assert variants.retuned(rows) == "60.0 ± 14.1 (2 of 3 seeds)"  # a seed without the attack is named, not averaged
    assert variants.retuned(rows[2:]) == ""

    path = tmp_path / "variants.jsonl"
    run = {"attack": "sig", "poison_rate": 0.01, "seed": 1, "variant": "fst-kd", "strength": 16.0}
    variants.replace_record(path, {**run, "clean_accuracy": 0.8})
    variants.replace_record(path, {**run, "strength": 8.0, "clean_accuracy": 0.81})
    variants.replace_record(path, {**run, "clean_accuracy": 0.8, "retuning_attack_success_rate": 0.4})
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(r["strength"], r.get("retuning_attack_success_rate")) for r in records] == [(8.0, None), (16.0, 0.4)]
    assert not path.with_suffix(".tmp").exists()


def test_variants_refuse_to_replace_a_record_of_another_backdoored_model(tmp_path):
    variants = load_script("fst_variants")
    key = ("blended", 0.01, 0, "fst-kd", 16.0)
    earlier = {key: {"before_clean_accuracy": 0.8633, "before_attack_success_rate": 0.9416}}
    same = {"before_clean_accuracy": 0.8633, "before_attack_success_rate": 0.9416}
    variants.check_same_model(earlier, same, [key, ("sig", 0.01, 0, "fst-kd", 16.0)], tmp_path / "v.jsonl")
    rebuilt = {"before_clean_accuracy": 0.8645, "before_attack_success_rate": 0.9416}
    with pytest.raises(ValueError, match=r"^--results_file=.*v\.jsonl' holds \('blended', 0\.01, 0, 'fst-kd', 16\.0\) "
                       r"from another backdoored model \(before_clean_accuracy 0\.8633 there, 0\.8645 now\); pass"):  # fmt: skip
        variants.check_same_model(earlier, rebuilt, [key], tmp_path / "v.jsonl")
