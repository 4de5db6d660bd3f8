"""The recipes' argument dataclasses and their parser (HfArgumentParser plus `--config file.yaml`).

Each field checks itself in `__post_init__`, so a bad flag fails with one line before anything loads.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml
from transformers import HfArgumentParser

from hf_fst.errors import ConfigurationError, one_line

__all__ = [
    "AttackArguments",
    "DataArguments",
    "ModelArguments",
    "parse_attack_params",
    "rate_or_raise",
    "RecipeParser",
    "recipe_parser",
    "validate_target_label",
]


def rate_or_raise(value: float, arg_name: str) -> float:
    """Check a fraction in (0, 1]."""
    if not (isinstance(value, (int, float)) and math.isfinite(value) and 0 < value <= 1):
        raise ValueError(f"{arg_name}={value} is out of range; pass a fraction in (0, 1], e.g. 0.01 or 0.1")
    return float(value)


def validate_target_label(target_label: int, num_labels: int) -> None:
    """Reject a target class that the data set does not have."""
    if not 0 <= int(target_label) < num_labels:
        raise ValueError(
            f"--target_label={target_label} is outside the labels; use an integer in [0, {num_labels - 1}]"
        )


def parse_attack_params(text: str | None) -> dict[str, Any]:
    """Parse `--attack_params` given as JSON (`{"alpha": 0.1}`) or as `key=value,key=value`."""
    import json

    if not text or not text.strip():
        return {}
    text = text.strip()
    if text.startswith("{"):
        try:
            params = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(
                f"--attack_params={text!r} is not valid JSON ({err.msg}); use '{{\"key\": value}}' or key=value,..."
            ) from err
        if not isinstance(params, dict):
            raise ValueError(
                f"--attack_params={text!r} must be a JSON object; use '{{\"key\": value}}' or key=value,..."
            )
        return params
    params = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--attack_params: {item!r} is not key=value; use key=value,key=value or a JSON object")
        params[key.strip()] = _parse_scalar(value.strip())
    return params


def _parse_scalar(value: str) -> Any:
    lowered = value.lower()
    if lowered in {"true", "false"}:
        return lowered == "true"
    if lowered in {"none", "null"}:
        return None
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


@dataclass
class DataArguments:
    """Which data set to use and how to read and preprocess it."""

    dataset_name: str = field(
        default=None,
        metadata={"help": "Hub id of the data set, or a local folder (parquet, imagefolder, save_to_disk)."},
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "Config name of the data set, if any."})
    train_split: str = field(default="train", metadata={"help": "Split to poison / draw the tuning set from."})
    test_split: str = field(default="test", metadata={"help": "Split to measure C-Acc, ASR and RA on."})
    image_column_name: str | None = field(default=None, metadata={"help": "Image column; detected when unset."})
    label_column_name: str | None = field(default=None, metadata={"help": "Label column; detected when unset."})
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Keep only this many training rows (seeded shuffle), for quick runs."}
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Keep only this many test rows (seeded shuffle), for quick runs."}
    )
    augment: bool = field(
        default=True, metadata={"help": "Training augmentation: random crop with padding (and flip), as in the paper."}
    )
    horizontal_flip: bool = field(default=True, metadata={"help": "Random horizontal flip when --augment is on."})
    crop_padding: int | None = field(
        default=None, metadata={"help": "Padding of the random crop; default 1/8 of the image side (4 at 32x32)."}
    )
    streaming: bool = field(
        default=False,
        metadata={
            "help": "Stream the training split (an IterableDataset, bounded memory); needs --max_steps. The test "
            "split is still read into memory (limit it with --max_eval_samples)."
        },
    )
    shuffle_buffer_size: int = field(
        default=10_000,
        metadata={"help": "With --streaming: rows held for the seeded shuffle buffer (reshuffled every epoch)."},
    )

    def __post_init__(self) -> None:
        if not self.dataset_name:
            raise ValueError(
                "--dataset_name is required; pass a Hub id (e.g. uoft-cs/cifar10) or a local data set folder"
            )
        for name in ("max_train_samples", "max_eval_samples"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"--{name}={value} must be a positive number of rows; drop it to use every row")
        if self.crop_padding is not None and self.crop_padding < 0:
            raise ValueError(f"--crop_padding={self.crop_padding} must be >= 0 pixels; drop it for 1/8 of the side")
        if self.shuffle_buffer_size < 1:
            raise ValueError(
                f"--shuffle_buffer_size={self.shuffle_buffer_size} must be at least 1 (1 keeps the stream's order)"
            )


@dataclass
class ModelArguments:
    """Which model to start from."""

    model_id: str = field(
        default=None,
        metadata={
            "help": "Hub id or local folder of an image classifier (config and weights; an image processor is optional)."
        },
    )
    cache_dir: str | None = field(default=None, metadata={"help": "Where downloaded models and data sets are cached."})
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Allow writing into a non-empty --output_dir (it is never clobbered otherwise)."},
    )
    allow_pickle_weights: bool = field(
        default=False,
        metadata={
            "help": "DANGEROUS: also load weights from pickle files (pytorch_model.bin, checkpoints without "
            "safetensors). Unpickling a file can run code chosen by its author; use only for files you trust."
        },
    )

    def __post_init__(self) -> None:
        if not self.model_id:
            raise ValueError("--model_id is required; pass a Hub id or a local folder written by save_pretrained")


@dataclass
class AttackArguments:
    """The backdoor attack: builds the ASR test set (purify) and poisons the training set (train_backdoor).

    Unset (or `none`) in purify means the trigger is unknown: no ASR or RA is claimed, a trigger screen runs instead.
    """

    attack: str | None = field(
        default=None,
        metadata={
            "help": "Attack name (badnet, blended, sig, wanet, lc, ...); unset or 'none': the trigger is unknown."
        },
    )
    attack_params: str | None = field(
        default=None, metadata={"help": "Attack parameters as JSON or key=value,key=value (e.g. 'patch_size=3')."}
    )
    target_label: int = field(default=0, metadata={"help": "Target class of the all-to-one backdoor."})
    poison_rate: float = field(default=0.1, metadata={"help": "Share of the training set to poison, in (0, 1]."})

    @property
    def known(self) -> bool:
        """Whether an attack was named (`none` counts as unknown)."""
        return self.attack is not None and self.attack.strip().lower() != "none"

    def build(self, num_labels: int, **extra: Any):
        """The attack config, validated against the data set's labels; `extra` passes e.g. LC's clean model."""
        from hf_fst.attacks import get_attack

        if self.attack is None:
            raise ValueError("--attack is required here; pass an attack name, e.g. --attack badnet")
        validate_target_label(self.target_label, num_labels)
        params = parse_attack_params(self.attack_params)
        params.setdefault("target_label", self.target_label)
        try:
            return get_attack(self.attack, **params, **extra)
        except ValueError as err:
            message = one_line(err, 400)
            if "unknown attack" in message:
                raise ValueError(
                    f"--attack={self.attack!r} is not an attack; {message.split(';', 1)[-1].strip()}"
                ) from err
            raise ValueError(f"--attack_params={self.attack_params!r}: {message}") from err


CONFIG_FLAG = "--config"


class RecipeParser(HfArgumentParser):
    """`HfArgumentParser` with `--config file.yaml` and one-line errors.

    YAML values replace the dataclass defaults and command-line flags override them, as in TRL's parser. A key that
    is no flag, or a file that is not a YAML mapping, is refused by name. Errors are `ConfigurationError`s instead
    of a usage dump: with every TrainingArguments flag the usage text runs to hundreds of lines.
    """

    def __init__(self, dataclass_types: Sequence[type], **kwargs: Any) -> None:
        super().__init__(dataclass_types, **kwargs)
        self.add_argument(
            CONFIG_FLAG,
            default=argparse.SUPPRESS,
            metavar="FILE.yaml",
            help="YAML file of flag values (keys are flag names without --); command-line flags override it.",
        )

    def error(self, message: str):  # type: ignore[override]
        raise ConfigurationError(f"{message} (see --help)")

    def parse(self, argv: Sequence[str] | None = None) -> tuple[Any, ...]:
        """The dataclasses from `argv` (default `sys.argv[1:]`); a lone `args.json` is read as a JSON file."""
        args = list(sys.argv[1:] if argv is None else argv)
        if len(args) == 1 and args[0].endswith(".json"):
            return self.parse_json_file(json_file=os.path.abspath(args[0]))
        config, args = _pop_config(args)
        if config is not None:
            self.set_defaults_from_yaml(config)
        return self.parse_args_into_dataclasses(args=args)

    def set_defaults_from_yaml(self, path: str) -> None:
        """Make the values of a YAML file the defaults (and no longer required)."""
        try:
            with open(path, encoding="utf-8") as handle:
                values = yaml.safe_load(handle)
        except OSError as err:
            raise ConfigurationError(
                f"{CONFIG_FLAG}={path!r} cannot be read ({err.strerror}); pass a YAML file"
            ) from err
        except yaml.YAMLError as err:
            raise ConfigurationError(f"{CONFIG_FLAG}={path!r} is not valid YAML ({one_line(err)})") from err
        if values is None:
            return
        if not isinstance(values, dict):
            raise ConfigurationError(
                f"{CONFIG_FLAG}={path!r} holds a {type(values).__name__}; write a mapping of flag: value lines"
            )
        actions = {action.dest: action for action in self._actions}
        unknown = sorted(str(key) for key in values if key not in actions or key in ("help", "config"))
        if unknown:
            raise ConfigurationError(
                f"{CONFIG_FLAG}={path!r}: {', '.join(unknown)} {'is not a flag' if len(unknown) == 1 else 'are not flags'}"
                " of this command; see --help for the names (without the leading --)"
            )
        for key in values:
            actions[key].required = False
        self.set_defaults(**{key: _as_default(value) for key, value in values.items()})


def _pop_config(args: list[str]) -> tuple[str | None, list[str]]:
    """Take `--config FILE` / `--config=FILE` out of `args` (the dataclasses have no such field)."""
    config, rest, index = None, [], 0
    while index < len(args):
        arg = args[index]
        if arg == CONFIG_FLAG:
            if index + 1 >= len(args):
                raise ConfigurationError(f"{CONFIG_FLAG} needs a file name; pass {CONFIG_FLAG} path/to/config.yaml")
            config, index = args[index + 1], index + 2
            continue
        if arg.startswith(CONFIG_FLAG + "="):
            config = arg.partition("=")[2]
        else:
            rest.append(arg)
        index += 1
    return config, rest


def _as_default(value: Any) -> Any:
    """YAML scalars as argparse defaults: dicts (e.g. `optim_args`) as JSON text, the rest as they are."""
    return json.dumps(value) if isinstance(value, dict) else value


def recipe_parser(dataclass_types: Sequence[type]) -> RecipeParser:
    """The parser every recipe and `hf-fst` subcommand uses."""
    return RecipeParser(dataclass_types)
