"""Bad numbers on the recipes' command lines: one line, exit status 2, before any work, and no output folder.

Each case runs the recipe file as `__main__` in-process (as `python recipes/<name>.py ...` would), so the exit status
and the printed line are the real ones, without paying an interpreter start per case.
"""

from __future__ import annotations

import re
import runpy
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

PURIFY_CASES = [
    (["--num_train_epochs", "-1"], r"num_train_epochs=-1\.0 is negative"),
    (["--max_steps", "0", "--num_train_epochs", "0"], r"num_train_epochs=0\.0 with max_steps=0 trains no step"),
    (["--learning_rate", "-0.1"], r"learning_rate=-0\.1 must be > 0"),
    (["--learning_rate", "0"], r"learning_rate=0\.0 must be > 0"),
    (["--learning_rate", "inf"], r"learning_rate=inf is not a finite number"),
    (["--per_device_train_batch_size", "0"], r"per_device_train_batch_size=0 must be a whole number >= 1"),
    (["--per_device_eval_batch_size", "0"], r"per_device_eval_batch_size=0 must be a whole number >= 1"),
    (["--gradient_accumulation_steps", "0"], r"gradient_accumulation_steps=0 must be a whole number >= 1"),
    (["--max_grad_norm", "-1"], r"max_grad_norm=-1\.0 must be >= 0"),
    (["--weight_decay", "-0.5"], r"weight_decay=-0\.5 must be >= 0"),
    (["--label_smoothing_factor", "1.5"], r"label_smoothing_factor=1\.5 must be in \[0, 1\)"),
    (["--seed", "-1"], r"seed=-1 must be a whole number in \[0, 2\*\*32\)"),
    (["--fst_alpha", "-1"], r"fst_alpha=-1\.0 must be a finite number >= 0"),
    (["--fst_alpha", "nan"], r"fst_alpha=nan must be a finite number >= 0"),
    (["--fst_alpha", "strong"], r"fst_alpha='strong' must be a finite number >= 0 or 'auto'"),
    (
        ["--fst_alpha", "auto", "--max_accuracy_drop", "2"],
        r"max_accuracy_drop=2\.0 must be a fraction in \(0, 1\); .*0\.02",
    ),
    (["--fst_alpha", "auto", "--max_accuracy_drop", "0"], r"max_accuracy_drop=0\.0 must be a fraction in \(0, 1\)"),
    (["--fst_alpha", "auto", "--fst_validation_fraction", "1"], r"fst_validation_fraction=1\.0 must be a fraction"),
    (["--tuning_split_ratio", "0"], r"--tuning_split_ratio=0\.0 is out of range"),
    (["--tuning_split_ratio", "1.5"], r"--tuning_split_ratio=1\.5 is out of range"),
    (["--num_tuning_samples", "0"], r"--num_tuning_samples=0 gives an empty tuning set"),
    (["--max_train_samples", "0"], r"--max_train_samples=0 must be a positive number of rows"),
    (["--max_eval_samples", "-5"], r"--max_eval_samples=-5 must be a positive number of rows"),
    (["--shuffle_buffer_size", "0"], r"--shuffle_buffer_size=0 must be at least 1"),
    (["--crop_padding", "-1"], r"--crop_padding=-1 must be >= 0"),
    (["--save_steps", "0"], r"save_steps=0\.0 must be > 0"),
    (["--adam_epsilon", "0"], r"adam_epsilon=0\.0 must be > 0"),
    (["--max_steps", "-7"], r"max_steps=-7 is below -1"),
    (["--dataloader_num_workers", "-2"], r"dataloader_num_workers=-2 must be >= 0"),
    (["--save_total_limit", "0"], r"save_total_limit=0 must be >= 1"),
]
TRAIN_BACKDOOR_CASES = [
    (["--num_train_epochs", "-1"], r"num_train_epochs=-1\.0 is negative"),
    (["--learning_rate", "-0.1"], r"learning_rate=-0\.1 must be > 0"),
    (["--per_device_train_batch_size", "0"], r"per_device_train_batch_size=0 must be a whole number >= 1"),
    (["--poison_rate", "0"], r"--poison_rate=0\.0"),
    (["--poison_rate", "1.5"], r"--poison_rate=1\.5"),
    (["--max_steps", "0", "--num_train_epochs", "0"], r"trains no step"),
]
CASES = [("purify", *c) for c in PURIFY_CASES] + [("train_backdoor", *c) for c in TRAIN_BACKDOOR_CASES]


@pytest.mark.parametrize(("recipe", "flags", "message"), CASES, ids=[f"{r}{' '.join(f)}" for r, f, _ in CASES])
def test_bad_number_exits_2_with_one_line_and_writes_nothing(recipe, flags, message, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    argv = [f"recipes/{recipe}.py", "--dataset_name", str(tmp_path / "data"), "--model_id", str(tmp_path / "model")]
    argv += ["--output_dir", str(out), "--report_to", "none", *flags]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(REPO / "recipes" / f"{recipe}.py"), run_name="__main__")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert re.search(message, err[0]), err[0]
    assert not out.exists() and not Path(f"{out}.partial").exists()
    assert len(CASES) >= 25
