"""Model cards and Hub publishing, against a local HTTP server that speaks the Hub API (tests/hub_server.py).

huggingface_hub reads HF_ENDPOINT and HF_HUB_OFFLINE at import, so everything that talks to the fake Hub runs in
a subprocess with those variables set; nothing under test is monkeypatched.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from hub_server import FakeHub
from huggingface_hub import ModelCard
from transformers import ResNetConfig, ResNetForImageClassification

from hf_fst.hub import format_table, get_token_or_raise, redacted_command, render_model_card, template_path
from hf_fst.transforms import default_image_processor

REPO = Path(__file__).resolve().parents[1]
TOKEN = "hf_fakeTokenForTests0123456789"

BEFORE = {"clean_accuracy": 0.93, "attack_success_rate": 0.975, "robust_accuracy": 0.02}
AFTER = {"clean_accuracy": 0.915, "attack_success_rate": 0.031, "robust_accuracy": 0.84}


def card_kwargs(**overrides):
    kwargs = dict(
        before=BEFORE,
        after=AFTER,
        model_name="resnet-cifar10-badnet-fst",
        base_model="someone/resnet-cifar10-badnet",
        dataset_name="uoft-cs/cifar10",
        attack={"name": "badnet", "target_label": 0, "patch_size": 3, "location": "bottom-right"},
        poison_rate=0.01,
        tuning_mode="fst",
        fst_alpha=0.2,
        tuning_set_size=1000,
        tuning_split_ratio=0.02,
        training={"num_train_epochs": 10, "learning_rate": 0.01, "batch_size": 128, "optim": "sgd"},
        seed=7,
        command="python recipes/purify.py --model_id someone/resnet-cifar10-badnet --tuning_mode fst",
        label_names=["airplane", "automobile"],
    )
    kwargs.update(overrides)
    return kwargs


def subprocess_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    env.update(PYTHONPATH=f"{REPO}{os.pathsep}{REPO / 'tests'}", HF_HOME=str(tmp_path / "hf_home"), **extra)
    return env


def test_purified_card_round_trips_through_model_card_load(tmp_path):
    card = render_model_card(**card_kwargs())
    path = tmp_path / "README.md"
    card.save(str(path))
    loaded = ModelCard.load(str(path))
    results = {r.metric_type: r.metric_value for r in loaded.data.eval_results}
    assert results == {
        "clean_accuracy_before": 93.0,
        "attack_success_rate_before": 97.5,
        "robust_accuracy_before": 2.0,
        "clean_accuracy_after": 91.5,
        "attack_success_rate_after": 3.1,
        "robust_accuracy_after": 84.0,
    }
    assert {r.metric_name for r in loaded.data.eval_results} >= {"ASR before purification (%)", "ASR after fst (%)"}
    assert loaded.data.base_model == "someone/resnet-cifar10-badnet"
    assert loaded.data.pipeline_tag == "image-classification"
    text = loaded.text
    assert "| ASR | 97.50 | 3.10 |" in text
    assert "alpha = 0.2" in text and "1000 clean images" in text and "Seed: 7" in text
    assert "`patch_size`: `3`" in text and "Poisoning rate of the backdoored training set: 0.01" in text
    assert "python recipes/purify.py --model_id someone/resnet-cifar10-badnet --tuning_mode fst" in text
    assert "re-learn the backdoor" in text and "2410.09838" in text


def test_backdoored_card_and_local_base_model(tmp_path):
    card = render_model_card(**card_kwargs(before=None, base_model=str(tmp_path / "bd"), tuning_mode=None))
    card.save(str(tmp_path / "README.md"))
    loaded = ModelCard.load(str(tmp_path / "README.md"))
    assert [r.metric_type for r in loaded.data.eval_results] == [
        "clean_accuracy",
        "attack_success_rate",
        "robust_accuracy",
    ]
    assert loaded.data.base_model is None  # a local folder is not a Hub id
    assert "contains a backdoor on purpose" in loaded.text and "`airplane`" in loaded.text


def test_template_ships_with_the_package_and_matches_model_cards_folder():
    packaged = Path(template_path())
    assert packaged.is_file()
    assert packaged.read_text() == (REPO / "model_cards" / "model_card.md").read_text()


def test_command_redaction_and_table():
    argv = ["recipes/purify.py", "--hub_token", TOKEN, "--model_id", "m", f"--hub_token={TOKEN}"]
    command = redacted_command(argv)
    assert TOKEN not in command
    assert command == "python recipes/purify.py --hub_token '<redacted>' --model_id m '--hub_token=<redacted>'"
    table = format_table({"before": BEFORE, "after (fst)": AFTER})
    assert table.splitlines()[2].split() == ["ASR", "97.50", "3.10"]


def test_push_needs_a_token(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("HF_TOKEN_PATH", str(tmp_path / "token"))
    with pytest.raises(ValueError, match=r"--push_to_hub needs a Hugging Face write token.*hf auth login"):
        get_token_or_raise(None)
    assert get_token_or_raise("hf_explicit") == "hf_explicit"


def test_push_then_load_by_hub_id_offline(tmp_path):
    """Publish a checkpoint and card over real HTTP, download it into a fresh cache, then load it offline by id."""
    torch.manual_seed(0)
    model = ResNetForImageClassification(
        ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=2)
    )
    folder = tmp_path / "purified"
    model.save_pretrained(folder)
    default_image_processor(model.config, (32, 32)).save_pretrained(folder)
    render_model_card(**card_kwargs(repo_id="test-user/purified")).save(str(folder / "README.md"))
    (folder / "all_results.json").write_text(json.dumps(AFTER))
    (folder / "checkpoint-5").mkdir()
    (folder / "checkpoint-5" / "optimizer.pt").write_bytes(b"not published")

    with FakeHub(token=TOKEN) as hub:
        push = textwrap.dedent(
            f"""
            from hf_fst.hub import push_to_hub
            print(push_to_hub({str(folder)!r}, "purified", token={TOKEN!r}))
            """
        )
        env = subprocess_env(tmp_path, HF_ENDPOINT=hub.url)
        done = subprocess.run([sys.executable, "-c", push], env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-3000:]
        assert done.stdout.strip().startswith(f"{hub.url}/test-user/purified/commit/")
        assert TOKEN not in done.stdout + done.stderr

        repo = hub.repos["test-user/purified"]
        assert set(repo.files) == {
            "README.md",
            "all_results.json",
            "config.json",
            "model.safetensors",
            "preprocessor_config.json",
        }
        assert repo.files["model.safetensors"] == (folder / "model.safetensors").read_bytes()
        assert TOKEN.encode() not in b"".join(repo.files.values())
        posts = [r for r in hub.requests if r.method == "POST"]
        assert [r.path.rsplit("/", 2)[-2] if "/models/" in r.path else r.path for r in posts] == [
            "/api/repos/create",
            "/api/validate-yaml",
            "preupload",
            "commit",
        ]
        assert all(r.authorization == f"Bearer {TOKEN}" for r in posts if "validate" not in r.path)

        download = textwrap.dedent(
            """
            from huggingface_hub import hf_hub_download
            for name in ("config.json", "model.safetensors", "preprocessor_config.json", "README.md"):
                hf_hub_download("test-user/purified", name)
            """
        )
        done = subprocess.run([sys.executable, "-c", download], env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-3000:]

    # Server gone, Hub offline: the id resolves from the populated cache.
    load = textwrap.dedent(
        """
        import json, torch
        from huggingface_hub import ModelCard
        from hf_fst.loading import load_classifier, load_image_processor
        model = load_classifier("test-user/purified")
        processor = load_image_processor("test-user/purified")
        card = ModelCard.load("test-user/purified")
        print(json.dumps({
            "num_labels": model.config.num_labels,
            "weight_sum": float(model.classifier[1].weight.detach().sum()),
            "processor": type(processor).__name__,
            "asr_after": [r.metric_value for r in card.data.eval_results if r.metric_type == "attack_success_rate_after"],
        }))
        """
    )
    env = subprocess_env(tmp_path, HF_HUB_OFFLINE="1", HF_ENDPOINT="http://127.0.0.1:9")
    done = subprocess.run([sys.executable, "-c", load], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert loaded["num_labels"] == 2
    assert loaded["weight_sum"] == pytest.approx(float(model.classifier[1].weight.detach().sum()))
    assert loaded["processor"].startswith("ViTImageProcessor")
    assert loaded["asr_after"] == [3.1]


@pytest.mark.trainer_argument("push_to_hub + hub_strategy")
def test_trainer_pushes_an_fst_card_and_resumable_checkpoints(tmp_path):
    """FSTTrainer with push_to_hub: each hub_strategy's pushes carry the FST card, and checkpoints carry W0."""
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(REPO / "tests")!r})
        from tiny_models import random_image_rows, tiny_resnet
        from hf_fst import FSTConfig, FSTTrainer
        for strategy in ("all_checkpoints", "checkpoint", "end"):
            args = FSTConfig(
                output_dir={str(tmp_path)!r} + "/" + strategy, use_cpu=True, report_to="none", disable_tqdm=True,
                max_steps=4, per_device_train_batch_size=8, save_strategy="steps", save_steps=2, fst_alpha=0.3,
                push_to_hub=True, hub_model_id="test-user/fst-" + strategy, hub_strategy=strategy,
                hub_token={TOKEN!r}, hub_always_push=True,
            )
            trainer = FSTTrainer(model=tiny_resnet(), args=args, train_dataset=random_image_rows(16))
            trainer.train()
            trainer.push_to_hub()
        """
    )
    with FakeHub(token=TOKEN) as hub:
        env = subprocess_env(tmp_path, HF_ENDPOINT=hub.url)
        done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        repos = {name: dict(repo.files) for name, repo in hub.repos.items()}

    every = repos["test-user/fst-all_checkpoints"]
    for folder in ("checkpoint-2/", "checkpoint-4/"):
        assert {folder + "README.md", folder + "fst_state.safetensors", folder + "model.safetensors"} <= set(every)
    last = repos["test-user/fst-checkpoint"]
    assert {"last-checkpoint/README.md", "last-checkpoint/fst_state.safetensors"} <= set(last)
    end = repos["test-user/fst-end"]
    assert not any(name.startswith(("checkpoint-", "last-checkpoint")) for name in end)
    for strategy, files in (("all_checkpoints", every), ("checkpoint", last), ("end", end)):
        card = files["README.md"].decode()
        assert f"\n# fst-{strategy}\n" in card  # named after the repository, without the user's namespace
        assert (
            "`fst` (Feature Shift Tuning (FST))" in card and "| fst_alpha | 0.3 (normalised strength alpha x" in card
        )
        assert "| optimizer steps done when this card was written | 4 |" in card
        assert "library_name: transformers" in card and "defense-fst" in card
    checkpoint_card = every["checkpoint-2/README.md"].decode()
    assert "\n# fst-all_checkpoints\n" in checkpoint_card  # written by the checkpoint save, from hub_model_id
    assert "| optimizer steps done when this card was written | 2 |" in checkpoint_card
    assert TOKEN.encode() not in b"".join(b"".join(files.values()) for files in (every, last, end))
