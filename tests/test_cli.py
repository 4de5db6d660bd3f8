"""The `hf-fst` console command: subcommands, `--config file.yaml`, data sets by Hub id, progress, pipeline use.

The end-to-end runs go through real subprocesses with `HF_HUB_OFFLINE=1` and an `HF_HOME` whose cache one online
`load_dataset("uoft-cs/cifar10")` against the fake Hub filled (random 32x32 images), so they need no local copy of
CIFAR-10 and show that a data set named by its Hub id loads from the cache as it would on a user's machine.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from dataset_cache import DEAD_ENDPOINT, hf_env, populate_dataset_cache, write_cifar10_like
from datasets import load_dataset
from huggingface_hub import ModelCard
from transformers import ResNetConfig, ResNetForImageClassification, pipeline

from hf_fst.cli import COMMANDS, environment, main
from hf_fst.errors import ConfigurationError
from hf_fst.scripts import purify

REPO = Path(__file__).resolve().parents[1]
HUB_ID = "uoft-cs/cifar10"
ROWS = {"train": 200, "test": 100}


def cli(*args: str, env: dict[str, str] | None = None, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    """`hf-fst ...` in a fresh interpreter (the module the console script points at)."""
    return subprocess.run(
        [sys.executable, "-m", "hf_fst.cli", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def write_yaml(path: Path, values: dict) -> Path:
    path.write_text(yaml.safe_dump(values))
    return path


# ------------------------------------------------------------------------------------------------ the command
def test_console_script_points_at_the_cli():
    (script,) = entry_points(group="console_scripts", name="hf-fst")
    assert script.value == "hf_fst.cli:main"
    assert script.load() is main


@pytest.mark.parametrize("runner", ["module", "console script"])
def test_help_lists_every_subcommand(runner):
    if runner == "console script":
        executable = shutil.which("hf-fst")
        if executable is None:
            pytest.skip("hf-fst is not on PATH (package not installed with pip)")
        done = subprocess.run([executable, "--help"], capture_output=True, text=True, timeout=60)
    else:
        done = cli("--help")
    assert done.returncode == 0, done.stderr
    listed = [line.split()[0] for line in done.stdout.splitlines() if line.startswith("  ")]
    assert listed == ["purify", "train-backdoor", "benchmark", "import-checkpoint", "env"]


def test_subcommand_help_shows_its_flags_and_config():
    done = cli("purify", "--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: hf-fst purify")
    for flag in ("--config FILE.yaml", "--model_id", "--tuning_mode", "--fst_alpha", "--dataset_name"):
        assert flag in done.stdout


def test_bad_subcommand_and_no_subcommand(capsys):
    assert main(["purfy"]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err
        == "error: 'purfy' is not an hf-fst command; use one of purify, train-backdoor, benchmark, import-checkpoint, env"
    )
    assert main([]) == 2 and "usage: hf-fst" in capsys.readouterr().out


def test_env_reports_versions(capsys):
    assert main(["env"]) == 0
    printed = capsys.readouterr().out
    info = environment()
    assert info["torch"] == torch.__version__ and f"- torch: {torch.__version__}" in printed
    for key in ("hf-fst", "python", "transformers", "datasets", "accelerate", "huggingface_hub", "accelerator"):
        assert f"- {key}: " in printed


def test_every_subcommand_runs_its_recipes_main():
    import importlib

    for name, (module, _) in COMMANDS.items():
        recipe = REPO / "recipes" / f"{name.replace('-', '_')}.py"
        assert recipe.is_file(), recipe
        assert f"from {module} import" in recipe.read_text()
        assert callable(importlib.import_module(module).main)


# ------------------------------------------------------------------------------------------------ YAML configs
def test_yaml_values_are_defaults_and_flags_override_them(tmp_path):
    config = write_yaml(
        tmp_path / "purify.yaml",
        {
            "dataset_name": "some/data",
            "model_id": "some/model",
            "tuning_mode": "ft",
            "fst_alpha": 0.05,
            "num_train_epochs": 3,
            "augment": False,
            "output_dir": str(tmp_path / "out"),
        },
    )
    data, model, _, _, training = purify.make_parser().parse(["--config", str(config), "--num_train_epochs", "7"])
    assert (data.dataset_name, model.model_id) == ("some/data", "some/model")
    assert training.tuning_mode == "ft" and training.fst_alpha == 0.05 and data.augment is False
    assert training.num_train_epochs == 7  # the flag wins over the file
    # `--config=FILE` works too, and a flag given before the config still wins.
    _, _, _, _, training = purify.make_parser().parse(["--seed", "5", f"--config={config}"])
    assert training.seed == 5 and training.num_train_epochs == 3
    # Without a config the dataclass defaults stay (a fresh parser: defaults do not leak between parsers).
    data, *_ = purify.make_parser().parse(["--dataset_name", "x", "--model_id", "y"])
    assert data.augment is True


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("model_id: m\nlearning_rat: 0.1\n", r"learning_rat is not a flag of this command; see --help"),
        ("model_id: m\nfoo: 1\nbar: 2\n", r"bar, foo are not flags of this command"),
        ("- a\n- b\n", r"holds a list; write a mapping of flag: value lines"),
        ("model_id: [unclosed\n", r"is not valid YAML"),
    ],
)
def test_bad_yaml_is_refused_in_one_line(tmp_path, text, message):
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    with pytest.raises(ConfigurationError, match=rf"^--config='{config}'.*{message}") as err:
        purify.make_parser().parse(["--config", str(config)])
    assert "\n" not in str(err.value)


def test_missing_config_file_and_missing_value(tmp_path):
    with pytest.raises(ConfigurationError, match=r"^--config='.*nope.yaml' cannot be read"):
        purify.make_parser().parse(["--config", str(tmp_path / "nope.yaml")])
    with pytest.raises(ConfigurationError, match=r"^--config needs a file name"):
        purify.make_parser().parse(["--model_id", "m", "--config"])


def test_bad_yaml_through_the_command_exits_2_before_any_work(tmp_path):
    config = write_yaml(tmp_path / "c.yaml", {"dataset_name": "x", "model_id": "y", "tuning_mod": "fst"})
    done = cli("purify", "--config", str(config), "--output_dir", str(tmp_path / "out"))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"error: --config='{config}': tuning_mod is not a flag of this command; see --help for the names (without "
        "the leading --)"
    ]
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- end to end, offline, by Hub id
@pytest.fixture(scope="module")
def hub_source(tmp_path_factory) -> Path:
    """The content of the `uoft-cs/cifar10` repo the fake Hub serves: random images, the Hub's layout and card."""
    return write_cifar10_like(tmp_path_factory.mktemp("hub_repo") / "source", rows=ROWS)


@pytest.fixture(scope="module")
def offline_env(hub_source, tmp_path_factory) -> dict[str, str]:
    """An environment whose cache holds `uoft-cs/cifar10` and that cannot reach any Hub."""
    hf_home = tmp_path_factory.mktemp("hub_cache") / "hf_home"
    populate_dataset_cache(hf_home, HUB_ID, hub_source)
    env = hf_env(hf_home, endpoint=DEAD_ENDPOINT, offline=True)
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=f"{REPO}{os.pathsep}{env.get('PYTHONPATH', '')}")
    for name in ("HF_HUB_DISABLE_PROGRESS_BARS", "HF_DATASETS_DISABLE_PROGRESS_BARS"):
        env.pop(name, None)  # the commands decide which bars show
    return env


@pytest.fixture(scope="module")
def cifar_like_test_split(hub_source):
    """The test split the commands evaluate on (the repo folder read directly)."""
    return load_dataset(str(hub_source), split="test")


def pipeline_accuracy(model_dir: Path, split, mode: str) -> float:
    """Top-1 accuracy of `pipeline("image-classification")` on the split's PIL images, converted to `mode`."""
    classify = pipeline("image-classification", model=str(model_dir), device="cpu")
    names = split.features["label"].names
    outputs = classify([image.convert(mode) for image in split["img"]], top_k=1, batch_size=50)
    return float(
        np.mean([out[0]["label"] == names[label] for out, label in zip(outputs, split["label"], strict=True)])
    )


def tiny_resnet_folder(folder: Path) -> Path:
    torch.manual_seed(0)
    config = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=10)
    ResNetForImageClassification(config).save_pretrained(folder)
    return folder


COMMON = {"report_to": "none", "save_strategy": "no", "use_cpu": True, "dataloader_pin_memory": False, "seed": 0}


def test_train_backdoor_purify_and_benchmark_from_yaml_offline(offline_env, cifar_like_test_split, tmp_path):
    backdoored, purified = tmp_path / "backdoored", tmp_path / "purified"
    train_config = write_yaml(
        tmp_path / "train.yaml",
        {
            **COMMON,
            "dataset_name": HUB_ID,
            "model_id": str(tiny_resnet_folder(tmp_path / "init")),
            "attack": "badnet",
            "poison_rate": 0.1,
            "num_train_epochs": 1,
            "per_device_train_batch_size": 50,
            "learning_rate": 0.05,
            "output_dir": str(backdoored),
        },
    )
    done = cli("train-backdoor", "--config", str(train_config), "--seed", "3", env=offline_env)
    assert done.returncode == 0, done.stderr[-3000:]
    trained = json.loads((backdoored / "all_results.json").read_text())
    assert trained["seed"] == 3 and trained["num_poisoned"] == 20  # the flag beat the YAML; 10% of 200 rows
    # Progress bars are on by default: poisoning, training and evaluation each show one.
    for bar in ("Poisoning (badnet, rate 0.1)", "Evaluating", "it/s]"):
        assert bar in done.stderr, bar
    card = ModelCard.load(backdoored / "README.md")
    assert "hf-fst train-backdoor --config" in card.text and HUB_ID in card.text

    purify_config = write_yaml(
        tmp_path / "purify.yaml",
        {
            **COMMON,
            "dataset_name": HUB_ID,
            "model_id": str(backdoored),
            "attack": "badnet",
            "tuning_mode": "fst",
            "num_tuning_samples": 40,
            "num_train_epochs": 1,
            "per_device_train_batch_size": 20,
            "output_dir": str(purified),
            "disable_tqdm": True,
        },
    )
    done = cli("purify", "--config", str(purify_config), env=offline_env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Evaluating" not in done.stderr and "it/s]" not in done.stderr  # --disable_tqdm hides every bar
    after = json.loads((purified / "all_results.json").read_text())
    assert after["tuning_mode"] == "fst" and after["num_tuning_samples"] == 40
    assert after["before_clean_accuracy"] == pytest.approx(trained["clean_accuracy"])

    # Each checkpoint works in transformers' own pipeline, with the accuracy its results report.
    for folder, results in ((backdoored, trained), (purified, after)):
        for mode in ("RGB", "L"):
            accuracy = pipeline_accuracy(folder, cifar_like_test_split, mode)
            if mode == "RGB":  # the images' own mode: the same pixels the command evaluated
                assert accuracy == pytest.approx(results["clean_accuracy"], abs=0.02), folder
            else:  # grey images reach a colour model as three equal channels, without an error
                assert 0.0 <= accuracy <= 1.0

    grid_config = write_yaml(
        tmp_path / "grid.yaml",
        {
            "datasets": ["cifar10"],
            "attacks": ["badnet"],
            "poison_rates": [0.1],
            "tuning_modes": ["ft"],
            "seeds": [0],
            "backdoor_epochs": 1,
            "num_tuning_samples": 32,
            "tuning_epochs": 1,
            "results_file": str(tmp_path / "results.jsonl"),
            "cache_dir": str(tmp_path / "cache"),
        },
    )
    done = cli("benchmark", "--config", str(grid_config), env=offline_env)
    assert done.returncode == 0, done.stderr[-3000:]
    (record,) = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert record["dataset_source"] == HUB_ID and record["num_poisoned"] == 20
    assert "Decoding cifar10 train" in done.stderr and "training cifar10-resnet-s-badnet" in done.stderr


def test_readme_yaml_example_is_a_valid_purify_config(tmp_path):
    readme = (REPO / "README.md").read_text()
    block = readme.split("```yaml\n", 1)[1].split("```", 1)[0]
    config = tmp_path / "purify.yaml"
    config.write_text(block)
    data, model, attack, tuning, training = purify.make_parser().parse(["--config", str(config), "--seed", "1"])
    assert (model.model_id, data.dataset_name, attack.attack) == ("./backdoored", "uoft-cs/cifar10", "badnet")
    assert (training.tuning_mode, training.fst_alpha, training.num_train_epochs) == ("fst", 0.2, 10)
    assert tuning.tuning_split_ratio == 0.02 and training.seed == 1
