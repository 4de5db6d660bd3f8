"""The recipes end to end on a few hundred CIFAR-10 images and a tiny ResNet: outputs, bad input, Accelerate, Hub.

Bad-input cases call the recipes' `prepare()` in-process (fast); the end-to-end runs go through the command line,
including `accelerate launch` with one and with two CPU processes and a push to a local fake Hub.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hub_server import FakeHub
from huggingface_hub import ModelCard
from shared_data import write_cifar_subset
from transformers import ResNetConfig, ResNetForImageClassification

from hf_fst.errors import ConfigurationError

REPO = Path(__file__).resolve().parents[1]
TOKEN = "hf_recipeTestToken9876543210"
FAST = ["--report_to", "none", "--save_strategy", "no", "--disable_tqdm", "true", "--dataloader_pin_memory", "false"]


def load_recipe(name: str):
    """Import recipes/<name>.py (not a package) once per session."""
    key = f"hf_fst_recipe_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, REPO / "recipes" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module  # dataclasses look their module up while the file executes
        spec.loader.exec_module(module)
    return sys.modules[key]


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def cifar_small(tmp_path_factory) -> Path:
    """400 training and 200 test images drawn across all classes (the files are sorted by label)."""
    return write_cifar_subset(tmp_path_factory.mktemp("cifar_small"), {"train": 400, "test": 200})


def tiny_model(folder: Path, num_labels: int = 10) -> Path:
    """A ResNet folder with only config and weights (no image processor)."""
    torch.manual_seed(0)
    config = ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=num_labels)
    ResNetForImageClassification(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def backdoored(cifar_small, tmp_path_factory) -> Path:
    """Train a backdoored tiny ResNet through train_backdoor.main (in-process)."""
    root = tmp_path_factory.mktemp("backdoored")
    start = tiny_model(root / "init")
    out = root / "model"
    results = load_recipe("train_backdoor").main(
        [
            "--dataset_name", str(cifar_small), "--model_id", str(start), "--attack", "badnet",
            "--poison_rate", "0.1", "--target_label", "0", "--num_train_epochs", "2", "--learning_rate", "0.05",
            "--per_device_train_batch_size", "64", "--output_dir", str(out), "--seed", "0", *FAST,
        ]
    )  # fmt: skip
    assert results["poison_rate"] == 0.1 and results["num_poisoned"] == 40
    return out


def test_train_backdoor_outputs(backdoored):
    files = {p.name for p in backdoored.iterdir()}
    assert {"model.safetensors", "config.json", "preprocessor_config.json", "README.md", "all_results.json"} <= files
    config = json.loads((backdoored / "config.json").read_text())
    assert config["id2label"]["0"] == "airplane" and config["id2label"]["9"] == "truck"
    results = json.loads((backdoored / "all_results.json").read_text())
    for key in ("clean_accuracy", "attack_success_rate", "robust_accuracy"):
        assert 0.0 <= results[key] <= 1.0
    card = ModelCard.load(backdoored / "README.md")
    assert "contains a backdoor on purpose" in card.text
    assert {r.metric_type for r in card.data.eval_results} == {
        "clean_accuracy",
        "attack_success_rate",
        "robust_accuracy",
    }


def test_purify_reports_before_and_after(backdoored, cifar_small, tmp_path, caplog):
    weights = sha(backdoored / "model.safetensors")
    out = tmp_path / "purified"
    caplog.set_level(logging.INFO, logger="hf_fst.purify")
    results = load_recipe("purify").main(
        [
            "--dataset_name", str(cifar_small), "--model_id", str(backdoored), "--attack", "badnet",
            "--tuning_mode", "fst", "--fst_alpha", "0.2", "--tuning_split_ratio", "0.1", "--num_train_epochs", "1",
            "--per_device_train_batch_size", "20", "--output_dir", str(out), "--seed", "1", *FAST,
        ]
    )  # fmt: skip
    assert sha(backdoored / "model.safetensors") == weights  # the input model is never modified
    saved = json.loads((out / "all_results.json").read_text())
    assert saved["num_tuning_samples"] == 40 and saved["tuning_mode"] == "fst"
    before = json.loads((backdoored / "all_results.json").read_text())
    for key in ("clean_accuracy", "attack_success_rate", "robust_accuracy"):
        assert saved[key] == results[key]
        # "before" is the input model measured again on the same test split: it matches train_backdoor's numbers.
        assert saved[f"before_{key}"] == pytest.approx(before[key])
    card = ModelCard.load(out / "README.md")
    metrics = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert metrics["attack_success_rate_before"] == pytest.approx(round(100 * before["attack_success_rate"], 2))
    assert metrics["clean_accuracy_after"] == pytest.approx(round(100 * saved["clean_accuracy"], 2))
    assert "--tuning_mode fst" in card.text and "alpha = 0.2" in card.text and "40 clean images" in card.text
    config = json.loads((out / "config.json").read_text())
    assert config["id2label"]["1"] == "automobile"
    assert json.loads((out / "preprocessor_config.json").read_text())["size"] == {"height": 32, "width": 32}
    # The per-phase wall time is logged once, with every phase measured.
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("wall seconds: ")]
    phases = json.loads(line.removeprefix("wall seconds: "))
    assert set(phases) == {"startup", "data_preparation", "evaluation", "tuning", "saving"}
    assert all(seconds > 0 for seconds in phases.values())


def test_purify_with_an_accuracy_budget_records_the_search(backdoored, cifar_small, tmp_path):
    out = tmp_path / "auto"
    results = load_recipe("purify").main(
        [
            "--dataset_name", str(cifar_small), "--model_id", str(backdoored), "--attack", "badnet",
            "--fst_alpha", "auto", "--max_accuracy_drop", "0.05", "--fst_validation_folds", "2", "--tuning_split_ratio", "0.1",
            "--num_train_epochs", "1", "--per_device_train_batch_size", "20", "--output_dir", str(out), "--seed", "1",
            *FAST,
        ]
    )  # fmt: skip
    saved = json.loads((out / "all_results.json").read_text())
    search = saved["fst_alpha_search"]
    assert search["max_accuracy_drop"] == 0.05 and 8 <= search["validation_size"] <= 24 and len(search["tries"]) == 3
    # the recipe's training transform is hf-fst's, so the held-out images were judged unaugmented
    assert search["folds"] == 2 and search["held_out_augmented"] is False
    assert saved["fst_alpha"] == pytest.approx(search["chosen_alpha"]) == pytest.approx(results["fst_alpha"])
    assert saved["fst_alpha_normalized"] == pytest.approx(search["chosen"])
    card = ModelCard.load(out / "README.md").text
    assert "chosen without attack knowledge" in card and f"alpha = {saved['fst_alpha']:.4g}" in card
    assert "(2 disjoint parts, each candidate tuned once per part)" in card


def bad(cifar_small: Path, model: Path, out: Path, **flags: str) -> list[str]:
    args = {
        "--dataset_name": str(cifar_small),
        "--model_id": str(model),
        "--output_dir": str(out),
        "--attack": "badnet",
    }
    args.update(flags)
    return [item for pair in args.items() for item in pair if item != ""] + FAST


@pytest.mark.parametrize(
    ("recipe", "flags", "message"),
    [
        ("purify", {"--attack": "nope"}, r"^--attack='nope' is not an attack; .*badnet"),
        (
            "train_backdoor",
            {"--poison_rate": "1.5"},
            r"^--poison_rate=1.5 is out of range; pass a fraction in \(0, 1\]",
        ),
        ("purify", {"--target_label": "10"}, r"^--target_label=10 is outside the labels; use an integer in \[0, 9\]"),
        (
            "purify",
            {"--image_column_name": "image"},
            r"^--image_column_name='image' is not a column.*\['img', 'label'\]",
        ),
        ("purify", {"--label_column_name": "y"}, r"^--label_column_name='y' is not a column.*\['img', 'label'\]"),
        (
            "purify",
            {"--dataset_name": "nobody/missing"},
            r"^--dataset_name='nobody/missing'.*Hub cannot be reached.*local folder",
        ),
        (
            "purify",
            {"--model_id": "nobody/missing"},
            r"^--model_id='nobody/missing'.*Hub cannot be reached.*local folder",
        ),
        ("purify", {"--tuning_split_ratio": "0.001"}, r"^--tuning_split_ratio=0.001 of 400 .*empty tuning set"),
        ("purify", {"--tuning_split_ratio": "1.5"}, r"^--tuning_split_ratio=1.5 is out of range"),
        ("purify", {"--test_split": "validation"}, r"^--test_split='validation' is not a split"),
        ("train_backdoor", {"--tuning_mode": "fst"}, r"^--tuning_mode='fst': train_backdoor.py trains"),
        (
            "train_backdoor",
            {"--attack": "lf", "--attack_model_id": "nobody/clean"},
            r"^--attack_model_id: the 'lf' attack does not perturb with a clean model; fit its trigger first .*"
            r"--attack_params '\{\"pattern\": \"trigger.npy\"\}'$",
        ),
        (
            "train_backdoor",
            {"--attack": "badnet", "--attack_model_id": "nobody/clean"},
            r"^--attack_model_id: the 'badnet' attack does not perturb with a clean model; drop --attack_model_id$",
        ),
        ("purify", {"--attack": "none", "--retuning_attack": "true"}, r"^--retuning_attack needs --attack"),
        (
            "purify",
            {"--attack": "lc", "--retuning_attack": "true"},
            r"^--retuning_attack with --attack lc: .*clean model",
        ),
        ("purify", {"--retuning_poisoned_samples": "0"}, r"^--retuning_poisoned_samples=0 must be >= 1"),
    ],
)
def test_bad_input_is_one_line_and_early(recipe, flags, message, cifar_small, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = tiny_model(tmp_path / "model")
    out = tmp_path / "out"
    with pytest.raises(ConfigurationError, match=message) as err:
        load_recipe(recipe).prepare(bad(cifar_small, model, out, **flags))
    assert "\n" not in str(err.value)
    assert not out.exists()


def test_model_checks(cifar_small, tmp_path):
    purify = load_recipe("purify")
    out = tmp_path / "out"
    five = tiny_model(tmp_path / "five", num_labels=5)
    with pytest.raises(
        ConfigurationError, match=r"^--model_id: the head 'classifier.1' has 5 outputs but the data set has 10"
    ):
        purify.prepare(bad(cifar_small, five, out))
    headless = tiny_model(tmp_path / "headless", num_labels=0)
    with pytest.raises(ConfigurationError, match=r"^--model_id: .*no linear classification head.*head_name"):
        purify.prepare(bad(cifar_small, headless, out))
    assert not out.exists()


def test_unknown_tuning_mode_and_flag_are_one_line(cifar_small, tmp_path):
    purify = load_recipe("purify")
    with pytest.raises(
        ConfigurationError, match=r"^argument --tuning_mode.*invalid choice: 'magic' \(choose from 'fst', 'ft'"
    ):
        purify.prepare(bad(cifar_small, tmp_path, tmp_path / "out", **{"--tuning_mode": "magic"}))
    with pytest.raises(ConfigurationError, match=r"not used by the HfArgumentParser: \['--bogus_flag', '1'\]"):
        purify.prepare(bad(cifar_small, tmp_path, tmp_path / "out", **{"--bogus_flag": "1"}))


def test_existing_output_dir_and_push_without_token(cifar_small, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_TOKEN_PATH", str(tmp_path / "no-token"))
    purify = load_recipe("purify")
    model = tiny_model(tmp_path / "model")
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.txt").write_text("an earlier run")
    with pytest.raises(
        ConfigurationError, match=r"^--output_dir=.*exists and is not empty; pass --overwrite_output_dir"
    ):
        purify.prepare(bad(cifar_small, model, out))
    assert [p.name for p in out.iterdir()] == ["results.txt"]
    with pytest.raises(ConfigurationError, match=r"^--push_to_hub needs a Hugging Face write token.*hf auth login"):
        purify.prepare(bad(cifar_small, model, tmp_path / "new", **{"--push_to_hub": ""}))
    assert not (tmp_path / "new").exists()


def test_command_line_error_is_one_line_without_traceback(cifar_small, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
    model = tiny_model(tmp_path / "model")
    cmd = [
        sys.executable,
        str(REPO / "recipes" / "purify.py"),
        *bad(cifar_small, model, tmp_path / "o", **{"--target_label": "42"}),
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: --target_label=42 is outside the labels; use an integer in [0, 9]"]
    assert "Traceback" not in done.stderr


def _rank_lines(stdout: str) -> list[dict]:
    return [json.loads(line.split(" ", 1)[1]) for line in stdout.splitlines() if line.startswith("[hf-fst] {")]


def test_accelerate_one_process_with_push_to_hub(backdoored, cifar_small, tmp_path):
    """`accelerate launch` with one process, publishing to a local fake Hub; no token in anything written."""
    out = tmp_path / "pushed"
    with FakeHub(token=TOKEN) as hub:
        env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
        # The token comes on the command line, the riskiest way: it must not reach the card's reproduce command.
        env.update(PYTHONPATH=str(REPO), HF_ENDPOINT=hub.url, HF_HOME=str(tmp_path / "hf_home"))
        cmd = [
            sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no", str(REPO / "recipes" / "purify.py"),
            "--dataset_name", str(cifar_small), "--model_id", str(backdoored), "--tuning_mode", "ft",
            "--num_tuning_samples", "16", "--max_eval_samples", "40", "--num_train_epochs", "1",
            "--per_device_train_batch_size", "8", "--output_dir", str(out), "--use_cpu",
            "--push_to_hub", "--hub_model_id", "lab/tiny-purified", "--hub_token", TOKEN, *FAST,
        ]  # fmt: skip
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-4000:]
        files = hub.repos["lab/tiny-purified"].files
    assert {"model.safetensors", "config.json", "preprocessor_config.json", "README.md", "all_results.json"} <= set(
        files
    )
    assert files["model.safetensors"] == (out / "model.safetensors").read_bytes()
    assert json.loads(files["all_results.json"])["fst_alpha"] is None  # ft has no alpha
    assert "lab/tiny-purified" in files["README.md"].decode()
    assert "--hub_token '<redacted>'" in files["README.md"].decode()
    lines = _rank_lines(done.stdout)
    assert len(lines) == 1 and lines[0]["world_size"] == 1
    written = b"".join(p.read_bytes() for p in out.rglob("*") if p.is_file()) + b"".join(files.values())
    assert TOKEN.encode() not in written
    assert TOKEN not in done.stdout + done.stderr


def test_accelerate_two_cpu_processes_agree(backdoored, cifar_small, tmp_path):
    out = tmp_path / "ddp"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "HF_"))}
    env.update(PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(REPO / "recipes" / "accelerate_configs" / "cpu_2proc.yaml"),
        str(REPO / "recipes" / "purify.py"),
        "--dataset_name", str(cifar_small), "--model_id", str(backdoored), "--tuning_mode", "fst",
        "--num_tuning_samples", "32", "--max_eval_samples", "40", "--num_train_epochs", "1",
        "--per_device_train_batch_size", "8", "--output_dir", str(out), "--use_cpu", *FAST,
    ]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-4000:]
    lines = sorted(_rank_lines(done.stdout), key=lambda line: line["rank"])
    assert [line["rank"] for line in lines] == [0, 1] and all(line["world_size"] == 2 for line in lines)
    keys = [k for k in lines[0]["results"] if "accuracy" in k or "success" in k]
    assert len(keys) == 6
    assert {k: lines[0]["results"][k] for k in keys} == {k: lines[1]["results"][k] for k in keys}
    assert lines[0]["param_sum"] == lines[1]["param_sum"]  # parameters and buffers identical on both ranks
    saved = json.loads((out / "all_results.json").read_text())
    assert {k: saved[k] for k in keys} == {k: lines[0]["results"][k] for k in keys}
    assert "accelerate launch --num_processes 2" in (out / "README.md").read_text()


def test_purify_without_a_known_attack_reports_clean_accuracy_only(backdoored, cifar_small, tmp_path):
    """A practitioner who does not know the trigger: `--attack none` tunes and reports C-Acc, ASR/RA are null."""
    out = tmp_path / "no_attack"
    results = load_recipe("purify").main(
        [
            "--dataset_name", str(cifar_small), "--model_id", str(backdoored), "--attack", "none",
            "--num_tuning_samples", "16", "--max_eval_samples", "40", "--num_train_epochs", "1",
            "--per_device_train_batch_size", "8", "--output_dir", str(out), *FAST,
        ]
    )  # fmt: skip
    assert results["attack_success_rate"] is None and results["before_robust_accuracy"] is None
    assert 0.0 <= results["clean_accuracy"] <= 1.0 and results["attack"] is None
    card = ModelCard.load(out / "README.md")
    assert {r.metric_type for r in card.data.eval_results} == {"clean_accuracy_before", "clean_accuracy_after"}
    assert "| ASR | n/a | n/a |" in card.text
    # Instead of an ASR for a guessed trigger: the screen of every registered trigger, before and after.
    screen = results["trigger_screen"]
    assert {"badnet", "blended", "sig", "wanet", "lc", "adaptive-blend"} <= set(screen)
    for row in screen.values():
        assert 0 <= row["before"] <= 1 and 0 <= row["after"] <= 1 and 0 <= row["class"] <= 9
    assert json.loads((out / "all_results.json").read_text())["trigger_screen"] == screen
    assert "## Trigger screen" in card.text and "claims no attack success rate" in card.text
    assert "retuning_attack_success_rate" not in results


def test_purify_with_the_retuning_attack(backdoored, cifar_small, tmp_path):
    out = tmp_path / "retuned"
    results = load_recipe("purify").main(
        [
            "--dataset_name", str(cifar_small), "--model_id", str(backdoored), "--attack", "badnet",
            "--retuning_attack", "true", "--retuning_poisoned_samples", "3", "--num_tuning_samples", "16",
            "--max_eval_samples", "40", "--num_train_epochs", "1", "--per_device_train_batch_size", "8",
            "--output_dir", str(out), *FAST,
        ]
    )  # fmt: skip
    saved = json.loads((out / "all_results.json").read_text())
    assert saved["retuning_poisoned_samples"] == 3 and "trigger_screen" not in saved
    for key in ("retuning_attack_success_rate", "retuning_clean_accuracy"):
        assert saved[key] == results[key] and 0 <= saved[key] <= 1
    card = (out / "README.md").read_text()
    assert "## Retuning attack" in card and "first 3 images replaced by poisoned" in card
    assert f"{100 * saved['retuning_attack_success_rate']:.2f}%" in card


def test_train_backdoor_warps_wanet_rows_during_training(cifar_small, tmp_path, caplog):
    """WaNet's rows reach the Trainer unwarped with their trigger_kind, and the collator warps them per batch."""
    import hf_fst.attacks.wanet as wanet

    calls = []
    original = wanet.WaNetConfig.apply_during_training

    def counting(self, pixels, kinds):
        calls.append(torch.as_tensor(kinds).bincount(minlength=3).tolist())
        return original(self, pixels, kinds)

    wanet.WaNetConfig.apply_during_training = counting
    try:
        results = load_recipe("train_backdoor").main(
            [
                "--dataset_name", str(cifar_small), "--model_id", str(tiny_model(tmp_path / "init")),
                "--attack", "wanet", "--poison_rate", "0.1", "--num_train_epochs", "2", "--learning_rate", "0.05",
                "--per_device_train_batch_size", "64", "--output_dir", str(tmp_path / "out"), "--seed", "0", *FAST,
            ]
        )  # fmt: skip
    finally:
        wanet.WaNetConfig.apply_during_training = original
    assert results["num_poisoned"] == 40
    # Every epoch: all 40 poisoned and 80 cross rows, spread over the 7 batches of 64 (a few batches may have none).
    totals = torch.tensor(calls).sum(0).tolist()
    assert totals[1] == 2 * 40 and totals[2] == 2 * 80
    assert results["attack"]["training_time"] is True
