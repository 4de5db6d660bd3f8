"""`python -m hf_fst.demo`: the no-download walkthrough, run here with fewer epochs."""

from __future__ import annotations

import json

import pytest
from huggingface_hub import ModelCard
from transformers import pipeline

from hf_fst.demo import DEMO_MARKER, digits_dataset, main, run_demo


def test_digits_dataset_is_stratified_8x8():
    data = digits_dataset()
    assert (len(data["train"]), len(data["test"])) == (1347, 450)
    assert data["train"][0]["image"].size == (8, 8) and data["train"][0]["image"].mode == "L"
    counts = [data["test"]["label"].count(c) for c in range(10)]
    assert min(counts) >= 43 and max(counts) <= 46


def test_demo_end_to_end(tmp_path, capsys):
    """The README's main command at its defaults (about 25 s): the numbers show what each mode does."""
    out = tmp_path / "demo"
    summary = run_demo(str(out), progress=False, command="python -m hf_fst.demo")
    printed = capsys.readouterr().out
    assert "metric" in printed and "FST auto" in printed and "no attack knowledge" in printed
    for name in ("backdoored", "ft", "fst"):
        assert set(summary[name]) == {"clean_accuracy", "attack_success_rate", "robust_accuracy"}
    before, ft, fst, auto = (summary[k] for k in ("backdoored", "ft", "fst", "fst_auto"))
    # Measured (seed 0, transformers 5.25): the backdoor implants (93.1% C-Acc, 99.5% ASR) and survives vanilla
    # fine-tuning (84.9% ASR) ...
    assert before["clean_accuracy"] > 0.85 and before["attack_success_rate"] > 0.9
    assert ft["attack_success_rate"] > 0.5
    # ... paper FST at alpha 0.1 cuts it by more than half (22.5%; 0.0-49.6% over seeds 0-5) at a price (84.4%;
    # 77.1-93.6% over seeds 0-5) that leaves most of the clean accuracy (a 100x stronger alpha leaves 11.8%) ...
    assert fst["attack_success_rate"] < before["attack_success_rate"] / 2
    assert 0.7 < fst["clean_accuracy"] < before["clean_accuracy"] - 0.02
    # ... and the 2-point budget pays less (90.7%, within budget + 1 point here) and removes less (63.2%).
    assert fst["clean_accuracy"] < auto["clean_accuracy"] and auto["clean_accuracy"] >= before["clean_accuracy"] - 0.03
    assert fst["attack_success_rate"] < auto["attack_success_rate"] < ft["attack_success_rate"]
    search = auto["fst_alpha_search"]
    floor = search["baseline_accuracy"] - search["max_accuracy_drop"]
    # 269 tuning images hold out 54 a fold, so the search judges each strength on 4 folds (216 images, >= 200).
    assert len(search["tries"]) == 3 and search["folds"] == 4 and search["validation_size"] == 216
    assert all(t["within_budget"] == (t["validation_accuracy"] >= floor) for t in search["tries"])
    assert auto["fst_alpha"] == pytest.approx(search["chosen"] / search["head_norm_squared"])
    assert summary["tuning_set_size"] == 269
    purified = out / "purified"
    assert {"model.safetensors", "config.json", "preprocessor_config.json", "README.md", "all_results.json"} <= {
        p.name for p in purified.iterdir()
    }
    results = json.loads((purified / "all_results.json").read_text())
    assert results["attack_success_rate"] == auto["attack_success_rate"]
    assert results["fst_alpha_search"] == search and results["fst_alpha"] == auto["fst_alpha"]
    assert results["before_attack_success_rate"] == summary["backdoored"]["attack_success_rate"]
    card = ModelCard.load(purified / "README.md")
    assert len(card.data.eval_results) == 6 and "python -m hf_fst.demo" in card.text
    assert "chosen without attack knowledge" in card.text and f"{search['chosen']:g}" in card.text
    # transformers' own pipeline runs the checkpoint on the digits (mode L, and RGB) at the accuracy the card reports.
    reported = {r.metric_type: r.metric_value for r in card.data.eval_results}["clean_accuracy_after"]
    classify = pipeline("image-classification", model=str(purified), device="cpu")
    test = digits_dataset()["test"]
    for mode in ("L", "RGB"):
        outputs = classify([image.convert(mode) for image in test["image"]], top_k=1, batch_size=64)
        hits = [out[0]["label"] == str(label) for out, label in zip(outputs, test["label"], strict=True)]
        assert 100 * sum(hits) / len(hits) == pytest.approx(reported, abs=0.01), mode
    assert not (out / "runs").exists()

    # A second run replaces its own earlier output; a folder it did not write is left alone.
    assert (out / DEMO_MARKER).exists()
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    assert main(["--output_dir", str(other), "--backdoor_epochs", "1", "--no_progress"]) == 2
    assert "pass --overwrite_output_dir" in capsys.readouterr().err
    assert [p.name for p in other.iterdir()] == ["notes.txt"]


@pytest.mark.parametrize("flags", [["--poison_rate", "0"], ["--target_label", "10"]])
def test_demo_bad_input(tmp_path, capsys, flags):
    assert main(["--output_dir", str(tmp_path / "d"), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --") and "\n" not in err
    assert not (tmp_path / "d").exists()
