"""Reliability faults, for real: SIGKILL and resume, run twice, pickle refusal, divergence, crash mid-write, tokens.

Every run goes through the recipes (subprocesses where the fault is process-level) on a few dozen CIFAR-10 images
and a tiny ResNet, so the whole file stays around a minute on two CPU cores.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hub_server import FakeHub
from safetensors.torch import load_file
from shared_data import write_cifar_subset
from transformers import ResNetConfig, ResNetForImageClassification

from hf_fst.errors import ConfigurationError
from hf_fst.outputs import staging_dir

REPO = Path(__file__).resolve().parents[1]
TOKEN = "hf_reliabilityToken0123456789abc"
QUIET = ["--report_to", "none", "--disable_tqdm", "true", "--dataloader_pin_memory", "false"]
FINISHED = ("model.safetensors", "README.md", "all_results.json")


def load_recipe(name: str):
    """Import recipes/<name>.py once per session (shared key with tests/test_recipes.py)."""
    key = f"hf_fst_recipe_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, REPO / "recipes" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module
        spec.loader.exec_module(module)
    return sys.modules[key]


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def env(**extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "ACCELERATE_"))}
    base.update(PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", **extra)
    return base


def recipe_cmd(name: str, *args: str) -> list[str]:
    return [sys.executable, str(REPO / "recipes" / f"{name}.py"), *args, *QUIET]


@pytest.fixture(scope="module")
def cifar_tiny(tmp_path_factory) -> Path:
    """96 training and 48 test images across all classes."""
    return write_cifar_subset(tmp_path_factory.mktemp("cifar_tiny"), {"train": 96, "test": 48})


def tiny_model(folder: Path, *, pickle_only: bool = False) -> Path:
    """A 10-class ResNet folder (config + weights); `pickle_only` stores the weights as pytorch_model.bin."""
    torch.manual_seed(0)
    config = ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=10)
    model = ResNetForImageClassification(config)
    model.save_pretrained(folder)
    if pickle_only:
        (folder / "model.safetensors").unlink()
        torch.save(model.state_dict(), folder / "pytorch_model.bin")
    return folder


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return tiny_model(tmp_path_factory.mktemp("model") / "tiny")


def purify_args(data: Path, model: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--dataset_name", str(data), "--model_id", str(model), "--attack", "badnet", "--output_dir", str(out),
        "--tuning_mode", "fst", "--fst_alpha", "0.2", "--num_tuning_samples", "48", "--max_eval_samples", "32",
        "--per_device_train_batch_size", "8", "--learning_rate", "0.01", "--seed", "3", *extra,
    ]  # fmt: skip


def looks_finished(folder: Path) -> bool:
    return any((folder / name).exists() for name in FINISHED)


# ------------------------------------------------------------------------------------------------- kill and resume
def recipe_args(recipe: str, data: Path, model: Path, out: Path, *extra: str) -> list[str]:
    if recipe == "purify":
        return purify_args(data, model, out, *extra)
    return [
        "--dataset_name", str(data), "--model_id", str(model), "--attack", "badnet", "--poison_rate", "0.1",
        "--output_dir", str(out), "--max_eval_samples", "32", "--per_device_train_batch_size", "8",
        "--learning_rate", "0.01", "--seed", "3", *extra,
    ]  # fmt: skip


@pytest.fixture
def one_thread():
    """In-process runs use one thread like the OMP_NUM_THREADS=1 subprocesses, so their floats match bit for bit."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("recipe", ["purify", "train_backdoor"])
def test_sigkill_after_checkpoint_then_resume_matches_uninterrupted_run(
    recipe, cifar_tiny, model_dir, tmp_path, one_thread
):
    """A recipe killed with SIGKILL after a checkpoint, resumed with --resume_from_checkpoint true: same weights.

    The killed run is a real subprocess; the reference and the resumed run are in-process (same thread count).
    """
    steps = ["--max_steps", "12", "--save_strategy", "steps", "--save_steps", "3"]
    main = load_recipe(recipe).main
    ref = tmp_path / "ref"
    main(recipe_args(recipe, cifar_tiny, model_dir, ref, *steps, *QUIET))  # in-process, one thread (fixture)

    out = tmp_path / "killed"
    staging = staging_dir(out)
    proc = subprocess.Popen(
        recipe_cmd(recipe, *recipe_args(recipe, cifar_tiny, model_dir, out, *steps)),
        env=env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 240
    marker = staging / "checkpoint-3" / "fst_state.safetensors"
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    assert marker.exists(), "the run never wrote its first checkpoint"
    # Killed mid-run: nothing under the final name, and the staging folder holds no final files.
    assert not out.exists()
    assert not looks_finished(staging)
    killed_at = sorted(p.name for p in staging.glob("checkpoint-*"))
    assert "checkpoint-12" not in killed_at, f"the kill came too late to test anything: {killed_at}"

    # Restarting without the flag refuses to clobber the unfinished run (checked in-process: it is cheap).
    with pytest.raises(ConfigurationError, match=r"an unfinished run left .*--resume_from_checkpoint true"):
        load_recipe(recipe).prepare(recipe_args(recipe, cifar_tiny, model_dir, out, *steps, *QUIET))

    main(recipe_args(recipe, cifar_tiny, model_dir, out, *steps, "--resume_from_checkpoint", "true", *QUIET))
    assert not staging.exists() and looks_finished(out)
    got, want = load_file(out / "model.safetensors"), load_file(ref / "model.safetensors")
    assert got.keys() == want.keys()
    for key in want:
        assert torch.equal(got[key], want[key]), key  # bit-identical, BatchNorm statistics included
    # FST state: the resumed run kept the W0 of the original model (not of the checkpoint's tuned head).
    w0_ref = load_file(ref / "checkpoint-12" / "fst_state.safetensors")
    w0_got = load_file(out / "checkpoint-12" / "fst_state.safetensors")
    assert torch.equal(w0_ref["w0"], w0_got["w0"]) and torch.equal(w0_ref["w0_norm"], w0_got["w0_norm"])
    original = load_file(model_dir / "model.safetensors")
    assert torch.equal(w0_got["w0"], original["classifier.1.weight"])
    ref_results = json.loads((ref / "all_results.json").read_text())
    got_results = json.loads((out / "all_results.json").read_text())
    for key in ("clean_accuracy", "attack_success_rate", "robust_accuracy"):
        assert got_results[key] == ref_results[key]


def test_trainer_resume_true_skips_a_checkpoint_cut_short(tmp_path, one_thread):
    """FSTTrainer: a checkpoint without its FST state (a crash mid-save) is skipped by resume_from_checkpoint=True."""
    from tiny_models import random_image_rows, tiny_resnet

    from hf_fst import FSTConfig, FSTTrainer

    rows = random_image_rows(48)

    def trainer(out: Path) -> FSTTrainer:
        args = FSTConfig(
            output_dir=str(out), max_steps=6, per_device_train_batch_size=8, save_strategy="steps", save_steps=2,
            report_to="none", disable_tqdm=True, dataloader_pin_memory=False, seed=0, learning_rate=0.05,
        )  # fmt: skip
        return FSTTrainer(model=tiny_resnet(), args=args, train_dataset=rows)

    full = trainer(tmp_path / "full")
    full.train()
    cut = trainer(tmp_path / "cut")
    cut.train()
    last = tmp_path / "cut" / "checkpoint-6"
    (last / "fst_state.safetensors").unlink()
    (last / "model.safetensors").write_bytes(b"half-written")
    resumed = trainer(tmp_path / "cut")
    assert resumed.last_complete_checkpoint() == str(tmp_path / "cut" / "checkpoint-4")
    resumed.train(resume_from_checkpoint=True)
    assert resumed.state.global_step == 6
    want = full.model.state_dict()
    assert all(torch.equal(value, want[key]) for key, value in resumed.model.state_dict().items())


# ------------------------------------------------------------------------------------------------- determinism
def test_same_seed_twice_is_bit_identical(cifar_tiny, model_dir, tmp_path):
    """Two fresh processes with one seed: same poisoned rows, same model bytes, same all_results.json bytes."""
    outs = []
    for name in ("a", "b"):
        seed = "5"
        out = tmp_path / name
        args = [
            "--dataset_name", str(cifar_tiny), "--model_id", str(model_dir), "--attack", "blended",
            "--poison_rate", "0.1", "--num_train_epochs", "1", "--per_device_train_batch_size", "16",
            "--max_eval_samples", "32", "--output_dir", str(out), "--seed", seed, "--save_strategy", "no",
        ]  # fmt: skip
        done = subprocess.run(
            recipe_cmd("train_backdoor", *args), env=env(), capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stderr[-3000:]
        outs.append(out)
    a, b = outs
    assert sha(a / "model.safetensors") == sha(b / "model.safetensors")
    assert (a / "all_results.json").read_bytes() == (b / "all_results.json").read_bytes()
    trained, start = load_file(a / "model.safetensors"), load_file(model_dir / "model.safetensors")
    assert not torch.equal(trained["classifier.1.weight"], start["classifier.1.weight"])  # it did train

    # purify.py twice (in-process, one thread): same tuned weights and the same all_results.json bytes.
    purify = load_recipe("purify")
    runs = [tmp_path / "p1", tmp_path / "p2"]
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for out in runs:
            purify.main(purify_args(cifar_tiny, model_dir, out, "--num_train_epochs", "2", "--save_strategy", "no"))
    finally:
        torch.set_num_threads(before)
    assert sha(runs[0] / "model.safetensors") == sha(runs[1] / "model.safetensors")
    assert (runs[0] / "all_results.json").read_bytes() == (runs[1] / "all_results.json").read_bytes()
    assert sha(runs[0] / "model.safetensors") != sha(model_dir / "model.safetensors")

    # The poisoned data and the tuning-set draw, built twice in this process: identical rows and pixels.
    from datasets import load_dataset

    from hf_fst import get_attack, poison_dataset
    from hf_fst.selection import select_tuning_set

    train = load_dataset(str(cifar_tiny), split="train")
    attack = get_attack("badnet", target_label=0)
    one = poison_dataset(train, attack, 0.1, seed=7)
    two = poison_dataset(train, attack, 0.1, seed=7)
    assert one["is_poisoned"] == two["is_poisoned"] and sum(one["is_poisoned"]) == 10
    pixels = [np.asarray(one[i]["img"]) for i in range(len(one))]
    assert all(np.array_equal(p, np.asarray(two[i]["img"])) for i, p in enumerate(pixels))
    picks = [select_tuning_set(train, num_samples=12, seed=s)["label"] for s in (1, 1, 2)]
    assert picks[0] == picks[1] and picks[0] != picks[2]


# ------------------------------------------------------------------------------------------------- safe loading
class _Payload:
    """Unpickling this creates a file: proof that the loader executed code from the checkpoint."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickle_weights_are_refused_unless_opted_in(cifar_tiny, tmp_path):
    purify = load_recipe("purify")
    pickled = tiny_model(tmp_path / "pickled", pickle_only=True)
    args = purify_args(cifar_tiny, pickled, tmp_path / "out", "--save_strategy", "no")
    with pytest.raises(ConfigurationError, match=r"^--model_id=.* has weights only in pickle format") as err:
        purify.prepare(args)
    assert "--allow_pickle_weights" in str(err.value) and "\n" not in str(err.value)

    # The documented opt-in loads the same weights.
    run = purify.prepare([*args, "--allow_pickle_weights"])
    saved = torch.load(pickled / "pytorch_model.bin", weights_only=True)
    assert torch.equal(run.model.state_dict()["classifier.1.weight"], saved["classifier.1.weight"])

    # A malicious pickle is refused without the opt-in and never executed, even with it (weights_only=True).
    evil = tiny_model(tmp_path / "evil", pickle_only=True)
    marker = tmp_path / "pwned"
    torch.save({"classifier.1.weight": _Payload(marker)}, evil / "pytorch_model.bin")
    with pytest.raises(ConfigurationError, match="pickle format"):
        purify.prepare(purify_args(cifar_tiny, evil, tmp_path / "out2", "--save_strategy", "no"))
    with pytest.raises(ConfigurationError, match=r"objects other than tensors and were not loaded"):
        purify.prepare(purify_args(cifar_tiny, evil, tmp_path / "out3", "--allow_pickle_weights"))
    assert not marker.exists()


def test_pickle_only_checkpoint_is_refused_on_resume(cifar_tiny, model_dir, tmp_path):
    purify = load_recipe("purify")
    out = tmp_path / "out"
    ckpt = staging_dir(out) / "checkpoint-4"
    ckpt.mkdir(parents=True)
    torch.save({"w": torch.zeros(2)}, ckpt / "pytorch_model.bin")
    (ckpt / "trainer_state.json").write_text("{}")
    (ckpt / "fst_state.safetensors").write_bytes(b"")
    args = purify_args(cifar_tiny, model_dir, out, "--resume_from_checkpoint", str(ckpt))
    with pytest.raises(ConfigurationError, match=r"^--resume_from_checkpoint=.*pickle format.*--allow_pickle_weights"):
        purify.prepare(args)
    # An incomplete checkpoint (cut short before its FST state was written) is named, not half-loaded.
    (ckpt / "fst_state.safetensors").unlink()
    with pytest.raises(ConfigurationError, match=r"^--resume_from_checkpoint=.* is incomplete"):
        purify.prepare(args)


def test_no_unsafe_torch_load_in_project():
    """Every torch.load call in the package, recipes and benchmarks passes weights_only=True."""
    offenders = []
    for folder in ("hf_fst", "recipes", "benchmarks"):
        for path in (REPO / folder).rglob("*.py"):
            text = path.read_text()
            for match in re.finditer(r"torch\.load\(", text):
                call = text[match.start() : text.find(")", match.start()) + 1]
                if "weights_only=True" not in call:
                    offenders.append(f"{path.relative_to(REPO)}: {call}")
    assert offenders == []


# ------------------------------------------------------------------------------------------------- numerical faults
def test_nonfinite_loss_exits_with_one_line_and_no_output(cifar_tiny, model_dir, tmp_path):
    out = tmp_path / "diverged"
    args = purify_args(cifar_tiny, model_dir, out, "--learning_rate", "1e30", "--num_train_epochs", "1")
    done = subprocess.run(
        recipe_cmd("purify", *args, "--save_strategy", "no"), env=env(), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 3, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, done.stderr[-3000:]
    assert re.match(r"error: non-finite training loss \(.+\) at optimizer step \d+ .*lower learning_rate", errors[0])
    assert not out.exists() and not looks_finished(staging_dir(out))


# ------------------------------------------------------------------------------------------------- crash mid-write
def test_crash_while_writing_outputs_leaves_nothing_finished(cifar_tiny, model_dir, tmp_path, monkeypatch):
    """A failure after the weights are written but before the card: the final folder never appears (or is intact)."""
    from hf_fst.scripts import purify

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(purify, "render_model_card", disk_full)
    out = tmp_path / "fresh"
    args = purify_args(cifar_tiny, model_dir, out, "--num_train_epochs", "1", "--save_strategy", "no")
    with pytest.raises(OSError, match="No space left"):
        purify.main(args)
    staging = staging_dir(out)
    assert not out.exists()
    assert (staging / "model.safetensors").exists() and not (staging / "README.md").exists()  # it did crash mid-write
    with pytest.raises(ConfigurationError, match=r"an unfinished run left .*--overwrite_output_dir to discard it"):
        purify.prepare(args)

    # An earlier finished run under --overwrite_output_dir survives the crash byte for byte.
    previous = tmp_path / "previous"
    previous.mkdir()
    (previous / "all_results.json").write_text('{"clean_accuracy": 0.9}\n')
    (previous / "model.safetensors").write_bytes(b"earlier weights")
    before = {p.name: p.read_bytes() for p in previous.iterdir()}
    args = purify_args(cifar_tiny, model_dir, previous, "--num_train_epochs", "1", "--save_strategy", "no")
    with pytest.raises(OSError, match="No space left"):
        purify.main([*args, "--overwrite_output_dir"])
    assert {p.name: p.read_bytes() for p in previous.iterdir()} == before

    # Without the fault, --overwrite_output_dir replaces it (and the stale staging folder) in one go.
    monkeypatch.undo()
    purify.main([*args, "--overwrite_output_dir"])
    assert not staging_dir(previous).exists()
    assert json.loads((previous / "all_results.json").read_text())["num_tuning_samples"] == 48
    assert (previous / "model.safetensors").read_bytes() != before["model.safetensors"]


# ------------------------------------------------------------------------------------------------- secrets
def test_token_never_written_anywhere(cifar_tiny, model_dir, tmp_path):
    """Token on the command line and in HF_TOKEN, checkpoints on, push to a fake Hub: grep every byte written."""
    out = tmp_path / "pushed"
    with FakeHub(token=TOKEN) as hub:
        run_env = env(HF_ENDPOINT=hub.url, HF_HOME=str(tmp_path / "hf_home"), HF_TOKEN=TOKEN)
        run_env.pop("HF_HUB_OFFLINE")
        args = purify_args(
            cifar_tiny, model_dir, out, "--max_steps", "4", "--save_strategy", "steps", "--save_steps", "2",
            "--logging_steps", "1", "--push_to_hub", "--hub_model_id", "lab/clean", "--hub_token", TOKEN,
        )  # fmt: skip
        done = subprocess.run(
            recipe_cmd("purify", *args), env=run_env, capture_output=True, text=True, timeout=300, cwd=tmp_path
        )
        assert done.returncode == 0, done.stderr[-3000:]
        pushed = hub.repos["lab/clean"].files
        authorized = [r for r in hub.requests if r.authorization]
    assert authorized and all(r.authorization == f"Bearer {TOKEN}" for r in authorized)  # it was used, only there
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    names = {p.relative_to(out).as_posix() for p in written if out in p.parents}
    assert {"training_args.bin", "all_results.json", "README.md", "checkpoint-2/training_args.bin"} <= names
    leaks = [str(p) for p in written if TOKEN.encode() in p.read_bytes()]
    leaks += [name for name, data in pushed.items() if TOKEN.encode() in data]
    assert leaks == []
    assert TOKEN not in done.stdout + done.stderr
    assert "'<redacted>'" in (out / "README.md").read_text()


EMIT_PROBE = """
import json, os, sys
from types import SimpleNamespace
import torch
from hf_fst.outputs import emit_rank_line

chunks = []
real_write = os.write
def recording_write(fd, data):
    if fd == 1:
        chunks.append(bytes(data))
    return real_write(fd, data)
os.write = recording_write
args = SimpleNamespace(process_index=1, world_size=2)
line = emit_rank_line(args, {"clean_accuracy": 0.5, "note": "x" * 1500}, torch.nn.Linear(3, 2))
sys.stderr.write(json.dumps([c.decode() for c in chunks]))
"""


def test_rank_line_goes_out_in_one_write_so_ranks_cannot_interleave():
    """Two ranks share one pipe: each line must leave in a single write, newline included (print makes two)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run([sys.executable, "-c", EMIT_PROBE], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    chunks = json.loads(done.stderr.strip().splitlines()[-1])
    assert len(chunks) == 1 and chunks[0].endswith("\n") and chunks[0].count("\n") == 1
    assert done.stdout == chunks[0]
    payload = json.loads(chunks[0].split(" ", 1)[1])
    assert payload["rank"] == 1 and payload["world_size"] == 2 and payload["results"]["clean_accuracy"] == 0.5
