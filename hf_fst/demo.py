"""End-to-end demo with no download: backdoor a digit classifier, then purify it with FT and with FST.

    python -m hf_fst.demo                      # about a minute on 2 CPU cores
    python -m hf_fst.demo --poison_rate 0.1 --output_dir ./outputs/demo

It uses scikit-learn's `load_digits` (1,797 8x8 grey images, shipped with scikit-learn), poisons a share of the
training split with BadNet (a 3x3 white square in the bottom-right corner, target class 0), trains a small ResNet on
it, then tunes copies with vanilla fine-tuning (FT), with Feature Shift Tuning at a fixed alpha (FST, the paper's
way), and with FST at the strength a 2-point clean-accuracy budget allows (`fst_alpha="auto"`, the recommended way:
it needs no knowledge of the attack), same loop, same clean tuning set, and prints C-Acc / ASR / RA for all four.
The budgeted FST checkpoint is written with its model card.
The data set is tiny, so the tuning set is 20% of its training split (the paper uses 2% of CIFAR-10's 50,000).
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["digits_dataset", "main", "run_demo", "small_resnet"]

DEMO_MARKER = "demo_results.json"


def digits_dataset(test_size: float = 0.25, seed: int = 0):
    """scikit-learn's digits as a `DatasetDict` with an `image` (8x8, mode L) and a `label` (ClassLabel) column."""
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Image
    from PIL import Image as PILImage
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    pixels = np.clip(np.rint(digits.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    labels = digits.target.astype(int)
    train_idx, test_idx = train_test_split(
        np.arange(len(labels)), test_size=test_size, random_state=seed, stratify=labels
    )
    features = Features({"image": Image(), "label": ClassLabel(names=[str(i) for i in range(10)])})

    def split(indices: np.ndarray):
        return Dataset.from_dict(
            {"image": [PILImage.fromarray(pixels[i], mode="L") for i in indices], "label": labels[indices].tolist()},
            features=features,
        )

    return DatasetDict({"train": split(np.sort(train_idx)), "test": split(np.sort(test_idx))})


def small_resnet(num_labels: int = 10, num_channels: int = 3):
    """A ~60k-parameter HF ResNet for 8x8 images (no stem down-sampling to keep some spatial resolution)."""
    from transformers import ResNetConfig, ResNetForImageClassification

    config = ResNetConfig(
        num_channels=num_channels,
        embedding_size=32,
        hidden_sizes=[32, 64],
        depths=[1, 1],
        layer_type="basic",
        downsample_in_first_stage=False,
        num_labels=num_labels,
        id2label={i: str(i) for i in range(num_labels)},
        label2id={str(i): i for i in range(num_labels)},
    )
    return ResNetForImageClassification(config)


def _check_output_dir(path: Path, overwrite: bool) -> None:
    """A previous demo run may be replaced; any other non-empty folder needs --overwrite_output_dir."""
    if path.exists() and any(path.iterdir()):
        if overwrite or (path / DEMO_MARKER).exists():
            shutil.rmtree(path)
            return
        raise ValueError(
            f"--output_dir={str(path)!r} exists, is not empty and was not written by the demo; "
            "pass --overwrite_output_dir or choose another folder"
        )


def _train(model, args, train_dataset, collate):
    from hf_fst import FSTTrainer

    trainer = FSTTrainer(model=model, args=args, train_dataset=train_dataset, data_collator=collate)
    trainer.train()
    return trainer


def run_demo(
    output_dir: str = "outputs/demo",
    *,
    poison_rate: float = 0.05,
    target_label: int = 0,
    tuning_ratio: float = 0.2,
    fst_alpha: float = 0.1,
    max_accuracy_drop: float = 0.02,
    fst_validation_folds: int | None = None,
    backdoor_epochs: int = 30,
    tuning_epochs: int = 20,
    tuning_lr: float = 0.01,
    seed: int = 0,
    overwrite_output_dir: bool = False,
    progress: bool = True,
    num_threads: int | None = 1,
    command: str | None = None,
) -> dict[str, Any]:
    """Run the whole demo and return `{"backdoored": {...}, "ft": {...}, "fst": {...}, "fst_auto": {...}}` (fractions).

    `fst_auto` also holds `fst_alpha` (paper units) and `fst_alpha_search` (what the budgeted search tried).
    """
    import torch
    from transformers import set_seed
    from transformers.utils import logging as hf_logging

    from hf_fst import FSTConfig, backdoor_test_set, evaluate_backdoor, get_attack, poison_dataset
    from hf_fst.arguments import validate_target_label
    from hf_fst.console import set_progress_bars
    from hf_fst.hub import format_table, render_model_card
    from hf_fst.selection import select_tuning_set
    from hf_fst.transforms import build_transform, collate_image_batch, default_image_processor
    from hf_fst.tuning.search import describe_search, strength_record

    start = time.perf_counter()
    out = Path(output_dir)
    _check_output_dir(out, overwrite_output_dir)
    validate_target_label(target_label, 10)
    if not 0 < poison_rate <= 1:
        raise ValueError(f"--poison_rate={poison_rate} is out of range; pass a fraction in (0, 1]")
    hf_logging.set_verbosity_error()
    set_progress_bars(progress)
    warnings.filterwarnings("ignore", category=UserWarning)
    if num_threads:
        # Tiny convolutions gain nothing from intra-op threads and slow down a lot on a busy machine.
        torch.set_num_threads(num_threads)
    set_seed(seed)

    data = digits_dataset(seed=seed)
    # patch_size is given at 32x32 and scaled: 10 -> a 3x3 white square at 8x8, as 3x3 is at 32x32 in the paper.
    attack = get_attack("badnet", target_label=target_label, patch_size=10)
    poisoned = poison_dataset(data["train"], attack, poison_rate, seed=seed)
    backdoor_test = backdoor_test_set(data["test"], attack)
    tuning = select_tuning_set(data["train"], ratio=tuning_ratio, seed=seed)
    print(
        f"digits: {len(data['train'])} train / {len(data['test'])} test images (8x8); "
        f"{int(sum(poisoned['is_poisoned']))} poisoned with BadNet -> class {target_label} "
        f"(rate {poison_rate:g}); tuning set: {len(tuning)} clean images",
        flush=True,
    )

    model = small_resnet()
    # No flip for digits (a mirrored 2 is not a 2); a 1-pixel random crop is the paper's augmentation at 8x8.
    train_tf = build_transform(model, None, "image", "label", train=True, horizontal_flip=False, crop_padding=1)
    eval_tf = build_transform(model, None, "image", "label", train=False)
    clean_eval, backdoor_eval = data["test"].with_transform(eval_tf), backdoor_test.with_transform(eval_tf)

    def config(name: str, **kwargs: Any) -> FSTConfig:
        return FSTConfig(
            output_dir=str(out / "runs" / name),
            report_to="none",
            save_strategy="no",
            logging_strategy="no",
            use_cpu=True,
            seed=seed,
            disable_tqdm=not progress,
            dataloader_pin_memory=False,
            **kwargs,
        )

    def measure(m) -> dict[str, float]:
        return {k: float(v) for k, v in evaluate_backdoor(m, clean_eval, backdoor_eval, device="cpu").items()}

    print(f"[1/4] training the backdoored model ({backdoor_epochs} epochs)", flush=True)
    backdoor_args = config(
        "backdoored",
        tuning_mode="ft",
        num_train_epochs=backdoor_epochs,
        learning_rate=0.05,
        per_device_train_batch_size=64,
        weight_decay=5e-3,
    )
    backdoored = _train(model, backdoor_args, poisoned.with_transform(train_tf), collate_image_batch).model
    results = {"backdoored": measure(backdoored)}

    checkpoints, trainers = {}, {}
    runs = (
        ("ft", "FT", {"tuning_mode": "ft"}),
        ("fst", f"FST with alpha {fst_alpha:g}", {"tuning_mode": "fst", "fst_alpha": fst_alpha}),
        ("fst_auto", f"FST within a {100 * max_accuracy_drop:g}-point budget (auto)",
         {"tuning_mode": "fst", "fst_alpha": "auto", "max_accuracy_drop": max_accuracy_drop,
          "fst_validation_folds": fst_validation_folds}),
    )  # fmt: skip
    for step, (name, title, settings) in enumerate(runs, start=2):
        print(f"[{step}/4] purifying with {title} ({tuning_epochs} epochs on {len(tuning)} images)", flush=True)
        args = config(
            name,
            **settings,
            num_train_epochs=tuning_epochs,
            learning_rate=tuning_lr,
            per_device_train_batch_size=min(128, len(tuning)),
        )
        trainers[name] = _train(backdoored, args, tuning.with_transform(train_tf), collate_image_batch)
        checkpoints[name] = trainers[name].model
        results[name] = measure(checkpoints[name])
    strength = strength_record(trainers["fst_auto"])

    elapsed = time.perf_counter() - start
    print()
    print(format_table({
        "backdoored": results["backdoored"], "FT": results["ft"], "FST": results["fst"], "FST auto": results["fst_auto"]
    }))  # fmt: skip
    print(
        f"(percent; C-Acc on {len(data['test'])} clean test images, ASR and RA on {len(backdoor_test)} triggered ones)"
    )

    print(
        f"(FST: the paper's fixed alpha {fst_alpha:g}; FST auto: alpha {strength['fst_alpha']:.3g} chosen on held-out "
        f"clean tuning images for at most {100 * max_accuracy_drop:g} points of clean accuracy, no attack knowledge)"
    )
    results["fst_auto"].update(strength)

    # The purified (budgeted FST) checkpoint with its card, plus the backdoored model it came from.
    shutil.rmtree(out / "runs", ignore_errors=True)
    processor = default_image_processor(backdoored.config, (8, 8))
    for name, trained in (("backdoored", backdoored), ("purified", checkpoints["fst_auto"])):
        trained.save_pretrained(out / name)
        processor.save_pretrained(out / name)
    after = {k: results["fst_auto"][k] for k in results["backdoored"]}
    (out / "purified" / "all_results.json").write_text(
        json.dumps(
            {
                **after,
                **{f"before_{k}": v for k, v in results["backdoored"].items()},
                "tuning_mode": "fst",
                **strength,
            },
            indent=2,
        )
        + "\n"
    )
    card = render_model_card(
        before=results["backdoored"],
        after=after,
        model_name="digits-resnet-badnet-fst-auto",
        base_model=str(out / "backdoored"),
        dataset_name="sklearn-digits",
        attack=attack.to_dict(),
        poison_rate=poison_rate,
        tuning_mode="fst",
        fst_alpha=strength["fst_alpha"],
        fst_alpha_normalized=strength["fst_alpha_normalized"],
        fst_alpha_choice=describe_search(strength["fst_alpha_search"]),
        tuning_set_size=len(tuning),
        tuning_split_ratio=tuning_ratio,
        training={
            "num_train_epochs": tuning_epochs,
            "learning_rate": tuning_lr,
            "batch_size": min(128, len(tuning)),
            "optim": "sgd",
            "lr_scheduler_type": "cosine",
        },
        seed=seed,
        command=command or "python -m hf_fst.demo",
        repo_id=str(out / "purified"),
        label_names=[str(i) for i in range(10)],
    )
    card.save(str(out / "purified" / "README.md"))
    summary = {**results, "seconds": round(elapsed, 1), "poison_rate": poison_rate, "tuning_set_size": len(tuning)}
    (out / DEMO_MARKER).write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {out / 'purified'} (model, image processor, README.md card) in {elapsed:.0f} s")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hf_fst.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_dir", default="outputs/demo")
    parser.add_argument("--overwrite_output_dir", action="store_true")
    parser.add_argument("--poison_rate", type=float, default=0.05)
    parser.add_argument("--target_label", type=int, default=0)
    parser.add_argument("--tuning_ratio", type=float, default=0.2, help="share of the clean training split to tune on")
    parser.add_argument("--fst_alpha", type=float, default=0.1, help="alpha of the fixed-alpha FST run")
    parser.add_argument("--max_accuracy_drop", type=float, default=0.02, help="budget of the auto FST run")
    parser.add_argument("--fst_validation_folds", type=int, default=None,
                        help="held-out folds of the auto FST run (default: enough for 200 held-out images)")  # fmt: skip
    parser.add_argument("--backdoor_epochs", type=int, default=30)
    parser.add_argument("--tuning_epochs", type=int, default=20)
    parser.add_argument("--tuning_lr", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num_threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--no_progress", action="store_true", help="hide progress bars")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    try:
        run_demo(
            args.output_dir,
            poison_rate=args.poison_rate,
            target_label=args.target_label,
            tuning_ratio=args.tuning_ratio,
            fst_alpha=args.fst_alpha,
            max_accuracy_drop=args.max_accuracy_drop,
            fst_validation_folds=args.fst_validation_folds,
            backdoor_epochs=args.backdoor_epochs,
            tuning_epochs=args.tuning_epochs,
            tuning_lr=args.tuning_lr,
            seed=args.seed,
            overwrite_output_dir=args.overwrite_output_dir,
            progress=not args.no_progress,
            num_threads=args.num_threads or None,
            command=" ".join(["python -m hf_fst.demo", *map(shlex.quote, sys.argv[1:] if argv is None else argv)]),
        )
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
