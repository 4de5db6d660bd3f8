"""A resumable experiment grid: data sets x attacks x poisoning rates x seeds x tuning modes.

Each backdoored model is trained once per (data set, model, attack, rate, seed) and cached, then every
tuning mode starts from it. Two threat models: by default each backdoored model is trained from scratch on
poisoned data (the paper's); with `base_epochs` one clean base model per data set is trained once and each
backdoor is implanted by fine-tuning it on poisoned data (cheaper, and labelled as such in every record).
Each finished tuning run appends one JSON line to the results file; a cell whose record is already there is
skipped, so an interrupted grid continues where it stopped.

Images are decoded once into uint8 tensors and augmented in batches in torch, so that on a CPU the
time goes into the model, not into the input pipeline.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import (
    PreTrainedModel,
)

from hf_fst.attacks import backdoor_test_set, get_attack, poison_dataset
from hf_fst.benchmark.architectures import build_model, model_class_for
from hf_fst.benchmark.config import GridConfig
from hf_fst.benchmark.records import append_record, device_name, head_norm_squared, read_records, record_key
from hf_fst.benchmark.retuning import retune, retuning_tensors
from hf_fst.benchmark.sources import DATASETS, dataset_source
from hf_fst.benchmark.tensors import (
    PIXEL_MEAN,
    PIXEL_STD,
    AugmentingCollator,
    EvaluationSets,
    TensorImages,
    decode_images,
    predict,
)
from hf_fst.benchmark.triggers import OPTIMISED_TRIGGERS, optimised_trigger
from hf_fst.columns import resolve_columns
from hf_fst.console import progress_enabled
from hf_fst.loading import load_image_dataset
from hf_fst.metrics import clean_accuracy
from hf_fst.tuning import FSTConfig, FSTTrainer
from hf_fst.tuning.search import strength_record

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------ runner


class GridRunner:
    """Runs a `GridConfig`, skipping finished cells and reusing cached backdoored models."""

    def __init__(self, config: GridConfig) -> None:
        self.config = config
        self._data: dict[str, dict[str, Any]] = {}

    # -- data
    def load(self, dataset_name: str) -> dict[str, Any]:
        if dataset_name not in self._data:
            source = dataset_source(dataset_name, self.config.data_dir)
            arg_name = "--data_dir" if self.config.data_dir else "--datasets"
            splits = load_image_dataset(source, arg_name=arg_name)
            train, test = splits["train"], splits["test"]
            if self.config.num_train_images:
                train = train.shuffle(seed=1234).select(range(min(self.config.num_train_images, len(train))))
            if self.config.num_test_images:
                test = test.shuffle(seed=1234).select(range(min(self.config.num_test_images, len(test))))
            image_column, label_column = resolve_columns(train)
            size = DATASETS[dataset_name]["image_size"]
            self._data[dataset_name] = {
                "train": train,
                "test": test,
                "image_column": image_column,
                "label_column": label_column,
                "num_labels": train.features[label_column].num_classes,
                "source": source,
                "image_size": size,
                "train_images": decode_images(train, image_column, size=size, desc=f"Decoding {dataset_name} train"),
                "train_labels": torch.tensor(train[label_column]),
                "test_images": decode_images(test, image_column, size=size, desc=f"Decoding {dataset_name} test"),
                "test_labels": np.asarray(test[label_column]),
            }
        return self._data[dataset_name]

    def settings(self, dataset_name: str) -> tuple[int, float | str]:
        paper = DATASETS[dataset_name]
        epochs = self.config.tuning_epochs or paper["tuning_epochs"]
        alpha = self.config.fst_alpha if self.config.fst_alpha is not None else paper["fst_alpha"]
        return epochs, alpha

    # -- models
    def train_model(
        self,
        model,
        images,
        labels,
        epochs,
        learning_rate,
        seed,
        output_dir,
        augment,
        flip,
        trigger=None,
        trainer_class: type[FSTTrainer] = FSTTrainer,
        **overrides,
    ) -> FSTTrainer:
        """Train with the grid's settings; `trigger=(attack, trigger_kinds)` for a training-time attack.

        `trainer_class` lets a study run a variant of the method (an `FSTTrainer` subclass) in the same setting.
        """
        settings = {
            "tuning_mode": "ft",
            "per_device_train_batch_size": self.config.backdoor_batch_size,
            "seed": seed,
            "use_cpu": not torch.cuda.is_available(),
            "save_strategy": "no",
            "report_to": "none",
            "disable_tqdm": self.config.disable_tqdm or not progress_enabled(),
            "logging_strategy": "no",
            "dataloader_drop_last": False,
        }
        settings.update(overrides)  # the caller's settings win (the retuning attack brings its own batch size)
        args = FSTConfig(output_dir=output_dir, num_train_epochs=epochs, learning_rate=learning_rate, **settings)
        trainer = trainer_class(
            model=model,
            args=args,
            train_dataset=TensorImages(images, labels, None if trigger is None else trigger[1]),
            data_collator=AugmentingCollator(
                augment=augment, flip=flip, attack=None if trigger is None else trigger[0]
            ),
        )
        trainer.train()
        trainer.model.cpu().eval()
        return trainer

    def _folder(self, key: str) -> Path:
        """Where the model `key` is or will be: the kept models' folder if it holds it, else the cache."""
        kept = Path(self.config.kept_models_dir) / key if self.config.kept_models_dir else None
        if kept is not None and (kept / "info.json").is_file():
            return kept
        return Path(self.config.cache_dir) / key

    def _cached(self, key: str, build) -> tuple[PreTrainedModel, dict[str, Any]]:
        folder = self._folder(key)
        if (folder / "info.json").is_file():
            model = model_class_for(self.config.model).from_pretrained(folder, use_safetensors=True).eval()
            return model, json.loads((folder / "info.json").read_text())
        logger.info("training %s (cached afterwards in %s)", key, folder)
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
        source = hashlib.sha1(data["source"].encode()).hexdigest()[:6]  # a Hub copy and a local one differ
        tag = f"e{config.backdoor_epochs}-lr{config.backdoor_learning_rate:g}-n{len(data['train'])}-d{source}"
        tag += "-aug" if config.backdoor_augment else ""
        return tag + (f"-{self._base_tag(data)}" if config.base_epochs else "")

    def _base_tag(self, data: dict[str, Any]) -> str:
        config = self.config
        source = hashlib.sha1(data["source"].encode()).hexdigest()[:6]
        tag = f"base-e{config.base_epochs}-lr{config.base_learning_rate:g}-n{len(data['train'])}-d{source}"
        return tag + ("-aug" if config.backdoor_augment else "")

    def clean_model(self, dataset_name: str, seed: int) -> PreTrainedModel:
        """A model trained on clean data: the LC attack's perturbation model and, with `base_epochs`, the base.

        With `base_epochs` there is one clean model per data set (`base_seed`), trained for `base_epochs`;
        otherwise one per seed, trained as the backdoored models are.
        """
        data = self.load(dataset_name)
        config = self.config
        if config.base_epochs:
            seed, epochs, learning_rate = config.base_seed, config.base_epochs, config.base_learning_rate
            key = f"{dataset_name}-{config.model}-clean-s{seed}-{self._base_tag(data)}"
        else:
            epochs, learning_rate = config.backdoor_epochs, config.backdoor_learning_rate
            key = f"{dataset_name}-{config.model}-clean-s{seed}-{self._training_tag(data)}"

        def build():
            model = build_model(config.model, data["num_labels"], data["train_images"].shape[-1], seed)
            start = time.perf_counter()
            model = self.train_model(
                model,
                data["train_images"],
                data["train_labels"],
                epochs,
                learning_rate,
                seed,
                tempfile.mkdtemp(prefix="clean-"),
                config.backdoor_augment,
                DATASETS[dataset_name]["flip"],
                weight_decay=5e-4,
            ).model
            info = {"train_seconds": time.perf_counter() - start, "epochs": epochs, "learning_rate": learning_rate,
                    "augment": config.backdoor_augment, "seed": seed, "device": device_name()}  # fmt: skip
            info["clean_accuracy"] = clean_accuracy(predict(model, data["test_images"]), data["test_labels"])
            return model, info

        return self._cached(key, build)[0]

    def attack(self, dataset_name: str, attack_name: str, seed: int):
        """The cell's attack config (LC gets the clean model of its seed for its perturbation, LF and TrojanNN a
        trigger optimised on it)."""
        params: dict[str, Any] = {}
        if attack_name in OPTIMISED_TRIGGERS:  # LF and TrojanNN: a trigger fitted on the clean model
            params["pattern"] = optimised_trigger(self, dataset_name, attack_name, seed)
        if attack_name == "lc":
            params["model"] = self.clean_model(dataset_name, seed)
            params["pixel_mean"], params["pixel_std"] = [PIXEL_MEAN] * 3, [PIXEL_STD] * 3
        return get_attack(attack_name, **params)

    def _backdoor_key(self, dataset_name: str, attack_name: str, rate: float, seed: int) -> str:
        tag = self._training_tag(self.load(dataset_name))
        return f"{dataset_name}-{self.config.model}-{attack_name}-r{rate:g}-s{seed}-{tag}"

    def has_backdoored_model(self, dataset_name: str, attack_name: str, rate: float, seed: int) -> bool:
        """Whether the cell's backdoored model is already trained (the key includes the data's path as given)."""
        return (self._folder(self._backdoor_key(dataset_name, attack_name, rate, seed)) / "info.json").is_file()

    def backdoored_model(self, dataset_name: str, attack_name: str, rate: float, seed: int):
        """The backdoored model of a cell, its evaluation sets and its before-metrics (trained once, cached)."""
        data = self.load(dataset_name)
        attack = self.attack(dataset_name, attack_name, seed)
        backdoor_test = backdoor_test_set(data["test"], attack)
        evaluation = EvaluationSets(
            clean_images=data["test_images"],
            clean_labels=data["test_labels"],
            backdoor_images=decode_images(
                backdoor_test, data["image_column"], size=data["image_size"], desc="Decoding backdoor test"
            ),
            backdoor_labels=np.asarray(backdoor_test[data["label_column"]]),
            backdoor_original_labels=np.asarray(backdoor_test["original_label"]),
        )
        key = self._backdoor_key(dataset_name, attack_name, rate, seed)

        def build():
            poisoned = poison_dataset(data["train"], attack, rate, seed=seed)
            images = decode_images(poisoned, data["image_column"], size=data["image_size"], desc="Decoding poisoned")
            labels = torch.tensor(poisoned[data["label_column"]])
            kinds = torch.tensor(poisoned["trigger_kind"]) if attack.is_training_time else None
            if self.config.base_epochs:
                model = copy.deepcopy(self.clean_model(dataset_name, seed))
            else:
                model = build_model(self.config.model, data["num_labels"], images.shape[-1], seed)
            start = time.perf_counter()
            model = self.train_model(
                model,
                images,
                labels,
                self.config.backdoor_epochs,
                self.config.backdoor_learning_rate,
                seed,
                tempfile.mkdtemp(prefix="backdoor-"),
                self.config.backdoor_augment,
                DATASETS[dataset_name]["flip"],
                trigger=(attack, kinds) if kinds is not None else None,
                weight_decay=5e-4,
            ).model
            info = {
                "device": device_name(),
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
            w0_norm_squared = head_norm_squared(model)
            retuning = None
            if self.config.retuning_attack:
                count, attack = pending[0][1]["num_tuning_samples"], self.attack(dataset_name, attack_name, seed)
                images, labels = retuning_tensors(self, dataset_name, attack, seed, count,
                                                  self.config.retuning_poisoned_samples)  # fmt: skip
                retuning = (dataset_name, images, labels, seed)
                before_retuning = evaluation.evaluate(retune(self, model, *retuning))
            for mode, record in pending:
                logger.info("tuning %s %s %g seed %d with %s", dataset_name, attack_name, rate, seed, mode)
                start = time.perf_counter()
                trainer = self.tune(model, dataset_name, mode, seed, record["num_tuning_samples"], alpha)
                tuned = trainer.model
                record["tuning_seconds"] = round(time.perf_counter() - start, 3)
                record.update({k: v for k, v in info.items() if k.startswith("before_")})
                record.update(evaluation.evaluate(tuned))
                record["num_poisoned"] = info["num_poisoned"]
                record["attack_config"] = info.get("attack")  # how the backdoor was made (WaNet: training_time)
                record["dataset_source"] = self.load(dataset_name)["source"]
                record["device"] = device_name()
                record["head_weight_norm_squared"] = w0_norm_squared
                strength = strength_record(trainer)  # what was used: paper units, scale-free, and any search
                record["fst_alpha_effective"] = strength["fst_alpha"]
                record["fst_alpha_normalized"] = strength["fst_alpha_normalized"]
                record["fst_alpha_search"] = strength["fst_alpha_search"]
                if retuning is not None:
                    after_retuning = evaluation.evaluate(retune(self, tuned, *retuning))
                    for prefix, found in (("retuning_", after_retuning), ("before_retuning_", before_retuning)):
                        record[prefix + "attack_success_rate"] = found["attack_success_rate"]
                        record[prefix + "clean_accuracy"] = found["clean_accuracy"]
                append_record(self.config.results_file, record)
                written.append(record)
                logger.info(
                    "%s %s %g seed %d %s: C-Acc %.4f ASR %.4f (before %.4f / %.4f)",
                    dataset_name, attack_name, rate, seed, mode, record["clean_accuracy"],
                    record["attack_success_rate"], record["before_clean_accuracy"], record["before_attack_success_rate"],
                )  # fmt: skip
        return written

    def tune(
        self,
        model: PreTrainedModel,
        dataset_name: str,
        mode: str,
        seed: int,
        count: int,
        alpha: float | str,
        trainer_class: type[FSTTrainer] = FSTTrainer,
        source: str = "train",
        **overrides: Any,
    ) -> FSTTrainer:
        """Tune a copy of `model` on `count` clean images of the `source` split drawn with `seed` (the same draw
        for every mode).

        `overrides` replace the grid's tuning settings (e.g. `normalize_fst_alpha`) for a study of variants;
        `source="test"` tunes on images the backdoored model never saw (then score it without them, see
        `EvaluationSets.excluding`).
        """
        data = self.load(dataset_name)
        epochs, _ = self.settings(dataset_name)
        index = self.tuning_index(dataset_name, seed, count, source)
        return self.train_model(
            model,
            data[f"{source}_images"][index],
            torch.as_tensor(np.asarray(data[f"{source}_labels"])[index.numpy()]),
            epochs,
            self.config.tuning_learning_rate,
            seed,
            tempfile.mkdtemp(prefix="tuning-"),
            self.config.tuning_augment,
            DATASETS[dataset_name]["flip"],
            trainer_class=trainer_class,
            **{
                "tuning_mode": mode,
                "fst_alpha": alpha,
                "normalize_fst_alpha": self.config.normalize_fst_alpha,
                "max_accuracy_drop": self.config.max_accuracy_drop,
                "fst_validation_folds": self.config.fst_validation_folds,
                "project_head_norm": self.config.project_head_norm,
                **overrides,
            },
        )

    def tuning_index(self, dataset_name: str, seed: int, count: int, source: str = "train") -> torch.Tensor:
        """The cell's clean tuning images in the `source` split: `count` drawn with `seed`, the same for every mode."""
        if source not in ("train", "test"):
            raise ValueError(f"source: {source!r} is not a split the grid holds; use 'train' or 'test'")
        split = self.load(dataset_name)[source]
        return torch.from_numpy(np.sort(np.random.default_rng(seed).permutation(len(split))[:count]))

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
            "normalize_fst_alpha": True if mode == "fst" and self.config.normalize_fst_alpha else None,
            "max_accuracy_drop": self.config.max_accuracy_drop if mode == "fst" and alpha == "auto" else None,
            "fst_validation_folds": self.config.fst_validation_folds if mode == "fst" and alpha == "auto" else None,
            "num_tuning_samples": min(count, len(data["train"])),
            "tuning_epochs": epochs,
            "tuning_learning_rate": self.config.tuning_learning_rate,
            "project_head_norm": self.config.project_head_norm,
            "backdoor_epochs": self.config.backdoor_epochs,
            "backdoor_learning_rate": self.config.backdoor_learning_rate,
            "num_train_images": data_size,
            "backdoor_augment": self.config.backdoor_augment,
            "tuning_augment": self.config.tuning_augment,
            "base_training": self.config.base_training,
            "retuning_poisoned_samples": self.config.retuning_poisoned_samples
            if self.config.retuning_attack
            else None,
        }
