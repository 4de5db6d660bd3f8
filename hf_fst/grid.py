"""A resumable experiment grid: data sets x attacks x poisoning rates x seeds x tuning modes.

Each backdoored model is trained once per (data set, model, attack, rate, seed) and cached, then every
tuning mode starts from it. Each finished tuning run appends one JSON line to the results file; a cell
whose record is already there is skipped, so an interrupted grid continues where it stopped.

Images are decoded once into uint8 tensors and augmented in batches in torch, so that on a CPU the
time goes into the model, not into the input pipeline.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from datasets import Dataset, load_dataset
from transformers import (
    PreTrainedModel,
    ResNetConfig,
    ResNetForImageClassification,
    ViTConfig,
    ViTForImageClassification,
)

from hf_fst.attacks import backdoor_test_set, get_attack, poison_dataset
from hf_fst.columns import resolve_columns
from hf_fst.metrics import attack_success_rate, clean_accuracy, robust_accuracy
from hf_fst.tuning import TUNING_MODES, FSTConfig, FSTTrainer

logger = logging.getLogger(__name__)

DATA_ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "data"

# Paper settings per data set: tuning epochs and FST alpha (CIFAR-10: 10 / 0.2; GTSRB: 15 / 0.1).
DATASETS: dict[str, dict[str, Any]] = {
    "cifar10": {"folder": "cifar10-jpeg", "tuning_epochs": 10, "fst_alpha": 0.2},
    "gtsrb": {"folder": "gtsrb-32", "tuning_epochs": 15, "fst_alpha": 0.1},
}

RECORD_KEY = (
    "dataset",
    "model",
    "attack",
    "poison_rate",
    "seed",
    "tuning_mode",
    "fst_alpha",
    "num_tuning_samples",
    "tuning_epochs",
    "tuning_learning_rate",
    "project_head_norm",
    "backdoor_epochs",
    "backdoor_learning_rate",
    "num_train_images",
    "backdoor_augment",
    "tuning_augment",
)

PIXEL_MEAN, PIXEL_STD = 0.5, 0.5


# name -> architecture keywords; ResNet widths are per stage, ViT patch 4 on 32x32 images (64 tokens).
ARCHITECTURES: dict[str, dict[str, Any]] = {
    "resnet-s": {"embedding_size": 32, "hidden_sizes": [32, 64, 128, 256], "depths": [1, 1, 1, 1]},
    "resnet-m": {
        "embedding_size": 32, "hidden_sizes": [32, 64, 128, 256], "depths": [1, 1, 1, 1], "layer_type": "basic"
    },
    "resnet-18": {
        "embedding_size": 64, "hidden_sizes": [64, 128, 256, 512], "depths": [2, 2, 2, 2], "layer_type": "basic"
    },
    "vit-s": {"patch_size": 4, "hidden_size": 192, "num_hidden_layers": 6, "num_attention_heads": 3,
              "intermediate_size": 384},
    "vit-t": {"patch_size": 4, "hidden_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4,
              "intermediate_size": 256},
}  # fmt: skip
MODELS = tuple(ARCHITECTURES)


def build_model(name: str, num_labels: int, image_size: int, seed: int) -> PreTrainedModel:
    """Benchmark architectures, randomly initialised with `seed`.

    - `resnet-s`: HF ResNet, widths 32-64-128-256, one bottleneck block per stage (0.13M parameters); the
      fastest on a CPU, but too small to learn a 0.5% backdoor (see BENCHMARKS.md).
    - `resnet-m`: the same widths with basic blocks (1.2M parameters), about half as fast.
    - `resnet-18`: the ResNet-18 layout (basic blocks, 64-128-256-512, two per stage).
    - `vit-s`: 6 layers, width 192, patch 4.
    - `vit-t`: 4 layers, width 128, patch 4; about 14x cheaper than `vit-s`, for CPU slices.
    """
    if name not in ARCHITECTURES:
        raise ValueError(f"model={name!r} is not a benchmark model; use one of {', '.join(MODELS)}")
    torch.manual_seed(seed)
    if name.startswith("vit"):
        config = ViTConfig(image_size=image_size, **ARCHITECTURES[name])
    else:
        config = ResNetConfig(**ARCHITECTURES[name])
    config.num_labels = num_labels
    config.id2label = {i: str(i) for i in range(num_labels)}
    config.label2id = {v: k for k, v in config.id2label.items()}
    return model_class_for(name)(config)


def model_class_for(name: str) -> type[PreTrainedModel]:
    return ViTForImageClassification if name.startswith("vit") else ResNetForImageClassification


# ------------------------------------------------------------------------------------------------- data
def decode_images(dataset: Dataset, image_column: str, batch_size: int = 2000) -> torch.Tensor:
    """All images of `dataset` as one uint8 tensor (N, C, H, W), decoded in batches."""
    chunks = []
    for start in range(0, len(dataset), batch_size):
        images = dataset[start : start + batch_size][image_column]
        chunks.append(np.stack([np.asarray(image.convert("RGB")) for image in images]))
    return torch.from_numpy(np.concatenate(chunks)).permute(0, 3, 1, 2).contiguous()


class TensorImages(torch.utils.data.Dataset):
    """Rows `{"pixel_values": uint8 CHW, "labels": int}` over tensors held in memory."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"pixel_values": self.images[index], "labels": self.labels[index]}


def normalize(images: torch.Tensor) -> torch.Tensor:
    return images.float().div_(255.0).sub_(PIXEL_MEAN).div_(PIXEL_STD)


class AugmentingCollator:
    """Stacks uint8 rows, then random crop (zero padding) and horizontal flip for the whole batch at once."""

    def __init__(self, padding: int = 4, augment: bool = True) -> None:
        self.padding, self.augment = padding, augment

    def __call__(self, rows: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        images = torch.stack([row["pixel_values"] for row in rows])
        labels = torch.stack([torch.as_tensor(row["labels"]) for row in rows])
        if self.augment:
            batch, _, height, width = images.shape
            pad = self.padding
            padded = F.pad(images, (pad, pad, pad, pad))
            offsets = torch.randint(0, 2 * pad + 1, (2, batch))
            rows_index = (offsets[0][:, None] + torch.arange(height))[:, None, :, None]
            cols_index = (offsets[1][:, None] + torch.arange(width))[:, None, None, :]
            images = padded[
                torch.arange(batch)[:, None, None, None],
                torch.arange(images.shape[1])[None, :, None, None],
                rows_index,
                cols_index,
            ]
            flip = torch.rand(batch) < 0.5
            images = torch.where(flip[:, None, None, None], images.flip(-1), images)
        return {"pixel_values": normalize(images), "labels": labels}


@torch.no_grad()
def predict(model: torch.nn.Module, images: torch.Tensor, batch_size: int = 500) -> np.ndarray:
    """Predicted class ids for uint8 images, in eval mode."""
    was_training = model.training
    model.eval()
    predictions = [
        model(pixel_values=normalize(images[start : start + batch_size])).logits.argmax(-1)
        for start in range(0, len(images), batch_size)
    ]
    model.train(was_training)
    return torch.cat(predictions).numpy()


@dataclass
class EvaluationSets:
    clean_images: torch.Tensor
    clean_labels: np.ndarray
    backdoor_images: torch.Tensor
    backdoor_labels: np.ndarray
    backdoor_original_labels: np.ndarray

    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        clean = predict(model, self.clean_images)
        backdoor = predict(model, self.backdoor_images)
        return {
            "clean_accuracy": clean_accuracy(clean, self.clean_labels),
            "attack_success_rate": attack_success_rate(backdoor, self.backdoor_labels),
            "robust_accuracy": robust_accuracy(backdoor, self.backdoor_original_labels),
        }


# ----------------------------------------------------------------------------------------------- config
@dataclass
class GridConfig:
    """What to run. Unset `tuning_epochs` / `fst_alpha` take the paper's value for each data set."""

    datasets: list[str] = field(default_factory=lambda: ["cifar10"])
    attacks: list[str] = field(default_factory=lambda: ["badnet", "blended", "sig", "wanet"])
    poison_rates: list[float] = field(default_factory=lambda: [0.01, 0.005])
    tuning_modes: list[str] = field(default_factory=lambda: list(TUNING_MODES))
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    model: str = "resnet-s"
    data_root: str = str(DATA_ROOT)
    num_train_images: int | None = None
    num_test_images: int | None = None
    backdoor_epochs: int = 20
    backdoor_learning_rate: float = 0.05
    backdoor_batch_size: int = 128
    backdoor_augment: bool = False
    tuning_augment: bool = True
    tuning_ratio: float = 0.02
    num_tuning_samples: int | None = None
    tuning_epochs: int | None = None
    tuning_learning_rate: float = 0.01
    fst_alpha: float | None = None
    project_head_norm: bool | None = None
    results_file: str = "benchmarks/results.jsonl"
    cache_dir: str = "benchmarks/cache"

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ValueError(f"model: {self.model!r} is unknown; use one of {', '.join(MODELS)}")
        for name in self.datasets:
            if name not in DATASETS:
                raise ValueError(f"datasets: {name!r} is unknown; use one of {', '.join(DATASETS)}")
        for mode in self.tuning_modes:
            if mode not in TUNING_MODES:
                raise ValueError(f"tuning_modes: {mode!r} is unknown; use one of {', '.join(TUNING_MODES)}")
        for rate in self.poison_rates:
            if not 0 < rate <= 1:
                raise ValueError(f"poison_rates: {rate} is outside (0, 1]")
        for attack in self.attacks:
            get_attack(attack)  # fails early with the list of registered attacks


# ------------------------------------------------------------------------------------------------ runner
def read_records(path: str | os.PathLike) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def record_key(record: dict[str, Any]) -> tuple:
    return tuple(json.dumps(record.get(k), sort_keys=True) for k in RECORD_KEY)


def append_record(path: str | os.PathLike, record: dict[str, Any]) -> None:
    """Append one line and fsync, so a crash loses at most the run in progress."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        handle.write(json.dumps(record, sort_keys=True) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


class GridRunner:
    """Runs a `GridConfig`, skipping finished cells and reusing cached backdoored models."""

    def __init__(self, config: GridConfig) -> None:
        self.config = config
        self._data: dict[str, dict[str, Any]] = {}

    # -- data
    def load(self, dataset_name: str) -> dict[str, Any]:
        if dataset_name not in self._data:
            folder = Path(self.config.data_root) / DATASETS[dataset_name]["folder"]
            if not folder.is_dir():
                raise ValueError(f"data_root: {folder} does not exist; point --data_root at the shared data folder")
            splits = load_dataset(str(folder))
            train, test = splits["train"], splits["test"]
            if self.config.num_train_images:
                train = train.shuffle(seed=1234).select(range(min(self.config.num_train_images, len(train))))
            if self.config.num_test_images:
                test = test.shuffle(seed=1234).select(range(min(self.config.num_test_images, len(test))))
            image_column, label_column = resolve_columns(train)
            self._data[dataset_name] = {
                "train": train,
                "test": test,
                "image_column": image_column,
                "label_column": label_column,
                "num_labels": train.features[label_column].num_classes,
                "train_images": decode_images(train, image_column),
                "train_labels": torch.tensor(train[label_column]),
                "test_images": decode_images(test, image_column),
                "test_labels": np.asarray(test[label_column]),
            }
        return self._data[dataset_name]

    def settings(self, dataset_name: str) -> tuple[int, float]:
        paper = DATASETS[dataset_name]
        epochs = self.config.tuning_epochs or paper["tuning_epochs"]
        alpha = self.config.fst_alpha if self.config.fst_alpha is not None else paper["fst_alpha"]
        return epochs, alpha

    # -- models
    def _train(
        self, model, images, labels, epochs, learning_rate, seed, output_dir, augment, **overrides
    ) -> PreTrainedModel:
        args = FSTConfig(
            output_dir=output_dir,
            tuning_mode=overrides.pop("tuning_mode", "ft"),
            num_train_epochs=epochs,
            learning_rate=learning_rate,
            per_device_train_batch_size=self.config.backdoor_batch_size,
            seed=seed,
            use_cpu=not torch.cuda.is_available(),
            save_strategy="no",
            report_to="none",
            disable_tqdm=True,
            logging_strategy="no",
            dataloader_drop_last=False,
            **overrides,
        )
        trainer = FSTTrainer(
            model=model,
            args=args,
            train_dataset=TensorImages(images, labels),
            data_collator=AugmentingCollator(augment=augment),
        )
        trainer.train()
        return trainer.model.cpu().eval()

    def _cached(self, key: str, build) -> tuple[PreTrainedModel, dict[str, Any]]:
        folder = Path(self.config.cache_dir) / key
        if (folder / "info.json").is_file():
            model = model_class_for(self.config.model).from_pretrained(folder, use_safetensors=True).eval()
            return model, json.loads((folder / "info.json").read_text())
        model, info = build()
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}-"))
        model.save_pretrained(staging)
        (staging / "info.json").write_text(json.dumps(info, indent=2, sort_keys=True))
        if folder.exists():
            shutil.rmtree(folder)
        staging.rename(folder)
        return model, info

    def _training_tag(self, data: dict[str, Any]) -> str:
        """What distinguishes one cached model's training from another's, for its folder name."""
        config = self.config
        tag = f"e{config.backdoor_epochs}-lr{config.backdoor_learning_rate:g}-n{len(data['train'])}"
        return tag + ("-aug" if config.backdoor_augment else "")

    def clean_model(self, dataset_name: str, seed: int) -> PreTrainedModel:
        """A model trained on clean data (the LC attack needs one for its perturbation)."""
        data = self.load(dataset_name)
        key = f"{dataset_name}-{self.config.model}-clean-s{seed}-{self._training_tag(data)}"

        def build():
            model = build_model(self.config.model, data["num_labels"], data["train_images"].shape[-1], seed)
            start = time.perf_counter()
            model = self._train(
                model,
                data["train_images"],
                data["train_labels"],
                self.config.backdoor_epochs,
                self.config.backdoor_learning_rate,
                seed,
                tempfile.mkdtemp(prefix="clean-"),
                self.config.backdoor_augment,
                weight_decay=5e-4,
            )
            return model, {"train_seconds": time.perf_counter() - start}

        return self._cached(key, build)[0]

    def backdoored_model(self, dataset_name: str, attack_name: str, rate: float, seed: int):
        """The backdoored model of a cell, its evaluation sets and its before-metrics (trained once, cached)."""
        data = self.load(dataset_name)
        params: dict[str, Any] = {}
        if attack_name == "lc":
            params["model"] = self.clean_model(dataset_name, seed)
            params["pixel_mean"], params["pixel_std"] = [PIXEL_MEAN] * 3, [PIXEL_STD] * 3
        attack = get_attack(attack_name, **params)
        backdoor_test = backdoor_test_set(data["test"], attack)
        evaluation = EvaluationSets(
            clean_images=data["test_images"],
            clean_labels=data["test_labels"],
            backdoor_images=decode_images(backdoor_test, data["image_column"]),
            backdoor_labels=np.asarray(backdoor_test[data["label_column"]]),
            backdoor_original_labels=np.asarray(backdoor_test["original_label"]),
        )
        key = f"{dataset_name}-{self.config.model}-{attack_name}-r{rate:g}-s{seed}-{self._training_tag(data)}"

        def build():
            poisoned = poison_dataset(data["train"], attack, rate, seed=seed)
            images = decode_images(poisoned, data["image_column"])
            labels = torch.tensor(poisoned[data["label_column"]])
            model = build_model(self.config.model, data["num_labels"], images.shape[-1], seed)
            start = time.perf_counter()
            model = self._train(
                model,
                images,
                labels,
                self.config.backdoor_epochs,
                self.config.backdoor_learning_rate,
                seed,
                tempfile.mkdtemp(prefix="backdoor-"),
                self.config.backdoor_augment,
                weight_decay=5e-4,
            )
            info = {
                "attack": attack.to_dict(),
                "num_poisoned": int(np.sum(poisoned["is_poisoned"])),
                "train_seconds": time.perf_counter() - start,
                **{f"before_{k}": v for k, v in evaluation.evaluate(model).items()},
            }
            return model, info

        model, info = self._cached(key, build)
        return model, evaluation, info

    # -- grid
    def cells(self) -> Iterator[tuple[str, str, float, int]]:
        for dataset_name in self.config.datasets:
            for attack_name in self.config.attacks:
                for rate in self.config.poison_rates:
                    for seed in self.config.seeds:
                        yield dataset_name, attack_name, rate, seed

    def run(self) -> list[dict[str, Any]]:
        """Run every unfinished cell; returns the records written by this call."""
        done = {record_key(r) for r in read_records(self.config.results_file)}
        written = []
        for dataset_name, attack_name, rate, seed in self.cells():
            epochs, alpha = self.settings(dataset_name)
            data_size = self.config.num_train_images or None
            pending = []
            for mode in self.config.tuning_modes:
                record = self._describe(dataset_name, attack_name, rate, seed, mode, epochs, alpha, data_size)
                if record_key(record) not in done:
                    pending.append((mode, record))
            if not pending:
                logger.info("skip %s %s %g seed %d: finished", dataset_name, attack_name, rate, seed)
                continue
            model, evaluation, info = self.backdoored_model(dataset_name, attack_name, rate, seed)
            for mode, record in pending:
                start = time.perf_counter()
                tuned = self.tune(model, dataset_name, mode, seed, record["num_tuning_samples"], alpha)
                record["tuning_seconds"] = round(time.perf_counter() - start, 3)
                record.update({k: v for k, v in info.items() if k.startswith("before_")})
                record.update(evaluation.evaluate(tuned))
                record["num_poisoned"] = info["num_poisoned"]
                append_record(self.config.results_file, record)
                written.append(record)
                logger.info(
                    "%s %s %g seed %d %s: C-Acc %.4f ASR %.4f (before %.4f / %.4f)",
                    dataset_name, attack_name, rate, seed, mode, record["clean_accuracy"],
                    record["attack_success_rate"], record["before_clean_accuracy"], record["before_attack_success_rate"],
                )  # fmt: skip
        return written

    def tune(
        self, model: PreTrainedModel, dataset_name: str, mode: str, seed: int, count: int, alpha: float
    ) -> PreTrainedModel:
        """Tune a copy of `model` on `count` clean training images drawn with `seed` (the same draw for every mode)."""
        data = self.load(dataset_name)
        epochs, _ = self.settings(dataset_name)
        index = torch.from_numpy(np.sort(np.random.default_rng(seed).permutation(len(data["train"]))[:count]))
        return self._train(
            model,
            data["train_images"][index],
            data["train_labels"][index],
            epochs,
            self.config.tuning_learning_rate,
            seed,
            tempfile.mkdtemp(prefix="tuning-"),
            self.config.tuning_augment,
            tuning_mode=mode,
            fst_alpha=alpha,
            project_head_norm=self.config.project_head_norm,
        )

    def _describe(self, dataset_name, attack_name, rate, seed, mode, epochs, alpha, data_size) -> dict[str, Any]:
        data = self.load(dataset_name)
        count = self.config.num_tuning_samples or int(round(self.config.tuning_ratio * len(data["train"])))
        if count <= 0:
            raise ValueError("tuning set is empty: raise tuning_ratio or pass num_tuning_samples")
        return {
            "dataset": dataset_name,
            "model": self.config.model,
            "attack": attack_name,
            "poison_rate": rate,
            "seed": seed,
            "tuning_mode": mode,
            "fst_alpha": alpha if mode == "fst" else None,
            "num_tuning_samples": min(count, len(data["train"])),
            "tuning_epochs": epochs,
            "tuning_learning_rate": self.config.tuning_learning_rate,
            "project_head_norm": self.config.project_head_norm,
            "backdoor_epochs": self.config.backdoor_epochs,
            "backdoor_learning_rate": self.config.backdoor_learning_rate,
            "num_train_images": data_size,
            "backdoor_augment": self.config.backdoor_augment,
            "tuning_augment": self.config.tuning_augment,
        }


def summarize(records: list[dict[str, Any]]) -> dict[tuple, dict[str, float]]:
    """Mean and sample standard deviation of the metrics per cell (all keys but the seed)."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for record in records:
        key = tuple(record.get(k) for k in RECORD_KEY if k != "seed")
        groups.setdefault(key, []).append(record)
    summary = {}
    for key, rows in groups.items():
        stats: dict[str, float] = {"seeds": len(rows)}
        for metric in ("clean_accuracy", "attack_success_rate", "robust_accuracy", "before_clean_accuracy",
                       "before_attack_success_rate"):  # fmt: skip
            values = np.array([r[metric] for r in rows], dtype=float)
            stats[metric] = float(values.mean())
            stats[f"{metric}_std"] = float(values.std(ddof=1)) if len(values) > 1 else math.nan
        summary[key] = stats
    return summary


def config_dict(config: GridConfig) -> dict[str, Any]:
    return asdict(config)
