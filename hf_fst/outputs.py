"""Crash-safe run outputs: stage in `<output_dir>.partial`, rename into place at the end, resume from checkpoints.

A run never writes under `--output_dir` until it has finished, so a crash cannot leave a folder that looks complete.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from hf_fst.transforms import default_image_processor, model_input_size, native_image_size
from hf_fst.weights import FST_STATE_FILE, check_safe_weights

logger = logging.getLogger(__name__)

__all__ = [
    "STAGING_SUFFIX",
    "check_output_dir",
    "commit_output",
    "prepare_staging",
    "emit_rank_line",
    "rank_line",
    "resolve_resume_checkpoint",
    "save_run_outputs",
    "set_label_mapping",
    "stage_training_output",
    "staging_dir",
    "training_summary",
]


def check_output_dir(output_dir: str | os.PathLike, overwrite: bool, resuming: bool = False) -> None:
    """Refuse to write into a non-empty `output_dir` unless asked to (or resuming from it), before any work starts."""
    path = Path(output_dir)
    if path.exists() and not path.is_dir():
        raise ValueError(f"--output_dir={str(output_dir)!r} is a file; pass a folder path")
    if path.is_dir() and any(path.iterdir()) and not (overwrite or resuming):
        raise ValueError(
            f"--output_dir={str(output_dir)!r} exists and is not empty; pass --overwrite_output_dir or choose another folder"
        )
    staging = staging_dir(output_dir)
    if staging.exists() and not (overwrite or resuming):
        raise ValueError(
            f"--output_dir={str(output_dir)!r}: an unfinished run left {str(staging)!r}; pass "
            "--resume_from_checkpoint true to continue it or --overwrite_output_dir to discard it"
        )


STAGING_SUFFIX = ".partial"


def staging_dir(output_dir: str | os.PathLike) -> Path:
    """The sibling folder a run writes into (checkpoints and final files) until it finishes: `<output_dir>.partial`.

    A sibling, not a subfolder, so that the finished `output_dir` appears in one `rename` and a crash can never leave
    a folder under the final name that looks complete.
    """
    path = Path(output_dir).expanduser()
    return path.with_name(path.name + STAGING_SUFFIX)


def _is_complete_checkpoint(folder: Path) -> bool:
    """A checkpoint whose last files were written: the Trainer state, then (by FSTTrainer) the FST state."""
    return (folder / "trainer_state.json").is_file() and (folder / FST_STATE_FILE).is_file()


def _latest_checkpoint(folder: Path) -> Path | None:
    found = []
    for child in folder.glob("checkpoint-*") if folder.is_dir() else ():
        step = child.name.rpartition("-")[2]
        if step.isdigit() and _is_complete_checkpoint(child):
            found.append((int(step), child))
    return max(found)[1] if found else None


def resolve_resume_checkpoint(
    value: str | None, output_dir: str | os.PathLike, *, allow_pickle: bool = False
) -> str | None:
    """Turn `--resume_from_checkpoint` into a checked folder, or None.

    `true` / `last` pick the newest complete checkpoint (one whose FST state was written, so a checkpoint cut short
    by a crash is skipped) in the staging folder, else in `output_dir`. A path must be such a checkpoint.
    """
    if value is None or str(value).strip() == "" or str(value).lower() in ("false", "none"):
        return None
    if str(value).lower() in ("true", "last", "latest"):
        for folder in (staging_dir(output_dir), Path(output_dir)):
            latest = _latest_checkpoint(folder)
            if latest is not None:
                check_safe_weights(latest, allow_pickle=allow_pickle, arg_name="--resume_from_checkpoint")
                return str(latest)
        raise ValueError(
            f"--resume_from_checkpoint={value}: no complete checkpoint in {str(staging_dir(output_dir))!r} or "
            f"{str(output_dir)!r}; pass a checkpoint folder, or drop the flag to start from scratch"
        )
    path = Path(value).expanduser()
    if not path.is_dir():
        raise ValueError(
            f"--resume_from_checkpoint={value!r} is not a folder; pass a checkpoint-N folder (checkpoints are in "
            f"{str(staging_dir(output_dir))!r} until the run finishes) or 'true' for the newest one"
        )
    if not _is_complete_checkpoint(path):
        raise ValueError(
            f"--resume_from_checkpoint={value!r} is incomplete (no trainer_state.json or {FST_STATE_FILE}, e.g. "
            "cut short by a crash); pass an earlier checkpoint-N folder or 'true' for the newest complete one"
        )
    check_safe_weights(path, allow_pickle=allow_pickle, arg_name="--resume_from_checkpoint")
    return str(path)


def prepare_staging(output_dir: str | os.PathLike, *, overwrite: bool, resuming: bool) -> Path:
    """Create (or reuse, when resuming) the staging folder; refuse a stale one left by a crash unless told.

    Called after the cheap checks so a typo never deletes anything.
    """
    staging = staging_dir(output_dir)
    if staging.exists() and not resuming:
        if not overwrite:
            raise ValueError(
                f"--output_dir={str(output_dir)!r}: an unfinished run left {str(staging)!r}; pass "
                "--resume_from_checkpoint true to continue it or --overwrite_output_dir to discard it"
            )
        shutil.rmtree(staging)
    staging.mkdir(parents=True, exist_ok=True)
    return staging


def commit_output(staging: str | os.PathLike, output_dir: str | os.PathLike) -> Path:
    """Move the finished staging folder to `output_dir` (one atomic rename when `output_dir` does not exist).

    When `output_dir` exists (allowed by `--overwrite_output_dir`, or a run resumed from its checkpoints), it is
    renamed aside first and removed only after the new folder is in place; its checkpoints that the staging folder
    lacks are carried over, so resuming never loses them.
    """
    staging, final = Path(staging), Path(output_dir).expanduser()
    if not final.exists():
        os.replace(staging, final)
        return final
    aside = final.with_name(f"{final.name}.old-{os.getpid()}")
    for child in final.glob("checkpoint-*"):
        if not (staging / child.name).exists():
            os.replace(child, staging / child.name)
    os.replace(final, aside)
    os.replace(staging, final)
    shutil.rmtree(aside, ignore_errors=True)
    return final


def set_label_mapping(config: Any, names: Sequence[str]) -> None:
    """Write `id2label`/`label2id` from the data set into a model config (so the checkpoint names its classes)."""
    config.id2label = {i: str(name) for i, name in enumerate(names)}
    config.label2id = {str(name): i for i, name in enumerate(names)}


def stage_training_output(training_args: Any, *, overwrite: bool) -> tuple[Path, Path]:
    """Point `training_args.output_dir` at `<output_dir>.partial`; return `(final_dir, staging_dir)`.

    Checkpoints and outputs are written to the staging folder, which `commit_output` renames into place at
    the end, so a crash never leaves a finished-looking `output_dir`.
    """
    output_dir = Path(training_args.output_dir)
    with training_args.main_process_first(desc="staging folder"):
        staging = prepare_staging(
            output_dir,
            overwrite=overwrite and training_args.process_index == 0,
            resuming=bool(training_args.resume_from_checkpoint) or training_args.process_index != 0,
        )
    training_args.output_dir = str(staging)
    return output_dir, staging


def rank_line(training_args: Any, results: dict, model: torch.nn.Module) -> str:
    """One JSON line per process, so multi-process runs can be checked for agreement."""
    checksum = float(sum(t.detach().double().sum() for t in model.state_dict().values()))
    payload = {
        "rank": training_args.process_index,
        "world_size": training_args.world_size,
        "results": results,
        "param_sum": checksum,
    }
    return f"[hf-fst] {json.dumps(payload)}"


def emit_rank_line(training_args: Any, results: dict, model: torch.nn.Module) -> str:
    """Print `rank_line` as one write to standard output and return it.

    Ranks launched together share one pipe; `print` writes the text and the newline separately, so two ranks'
    lines could merge into one. A single `os.write` of a line under the pipe's atomic size (4 KiB) cannot.
    """
    line = rank_line(training_args, results, model)
    data = (line + "\n").encode()
    sys.stdout.flush()
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # a stream without a descriptor, e.g. captured in-process
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
        return line
    while data:
        data = data[os.write(fd, data) :]
    return line


def save_run_outputs(
    trainer: Any, model: Any, processor: Any, names: Sequence[str], staging: Path, results: dict, test_split, image_col
) -> None:
    """Write model, image-processor config and `all_results.json` into the staging folder.

    `save_model` runs on every rank (FSDP gathers the weights collectively; rank 0 writes); the rest is written
    by the main process only.
    """
    set_label_mapping(model.config, names)
    channels = int(getattr(model.config, "num_channels", 3) or 3)
    if channels != 3:
        logger.warning(
            "the model takes %d-channel images, but pipeline('image-classification') converts every image to RGB: "
            "preprocess its inputs yourself, or train a 3-channel model for pipeline use",
            channels,
        )
    trainer.save_model(str(staging))
    if trainer.is_world_process_zero():
        if processor is None:
            size = model_input_size(model.config) or native_image_size(test_split, image_col)
            processor = default_image_processor(model.config, size)
        processor.save_pretrained(str(staging))
        (staging / "all_results.json").write_text(json.dumps(results, indent=2) + "\n")


def training_summary(training_args: Any) -> dict[str, Any]:
    """The training settings a model card reports."""
    return {
        "num_train_epochs": training_args.num_train_epochs,
        "learning_rate": training_args.learning_rate,
        "batch_size": training_args.per_device_train_batch_size * training_args.world_size,
        "optim": str(getattr(training_args.optim, "value", training_args.optim)),
        "lr_scheduler_type": str(getattr(training_args.lr_scheduler_type, "value", training_args.lr_scheduler_type)),
    }
