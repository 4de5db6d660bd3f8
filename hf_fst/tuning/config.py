"""`FSTConfig`: the training arguments of Feature Shift Tuning and its baselines."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

from transformers import TrainingArguments

TUNING_MODES: tuple[str, ...] = ("fst", "ft", "lp", "ft-init", "fe-tuning")
"""Tuning modes, as named in the FST paper.

- `fst`: re-initialised head, every parameter trains, loss + alpha * <W, W0>, head norm projected to ||W0||.
- `ft`: vanilla fine-tuning; original head, every parameter trains.
- `lp`: linear probing; original head, only the head trains.
- `ft-init`: re-initialised head, every parameter trains.
- `fe-tuning`: re-initialised head kept frozen; the feature extractor trains.
"""

REINITIALIZED_HEAD_MODES: frozenset[str] = frozenset({"fst", "ft-init", "fe-tuning"})


def normalize_tuning_mode(mode: str) -> str:
    """Accept `FT_init`, `fe_tuning`, ... as spellings of the canonical mode names."""
    return str(mode).strip().lower().replace("_", "-")


AUTO = "auto"
"""The `fst_alpha` value that asks the trainer to choose alpha from a clean-accuracy budget."""


def _bad(name: str, value: object, rule: str, fix: str) -> ValueError:
    return ValueError(f"{name}={value!r} {rule}; {fix}")


def parse_fst_alpha(value: object) -> float | str:
    """A finite alpha >= 0, or `"auto"`; text from a command line or YAML file is converted."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text == AUTO:
            return AUTO
        try:
            value = float(text)
        except ValueError:
            value = text
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise _bad("fst_alpha", value, "must be a finite number >= 0 or 'auto'",
                   "pass e.g. --fst_alpha 0.2 (the paper's CIFAR-10 value) or --fst_alpha auto")  # fmt: skip
    return float(value)


def check_training_numbers(args: TrainingArguments) -> None:
    """Refuse numeric training arguments that would fail late or train nothing, before any work starts.

    `TrainingArguments` accepts a negative learning rate, a batch size of 0 or -1 epochs; the Trainer then either
    crashes after evaluation and data loading, or "finishes" without a single optimizer step, which for a defense
    would report the untouched (or re-initialised) model as purified.
    """

    def number(name: str) -> float:
        value = getattr(args, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise _bad(name, value, "is not a finite number", f"pass a number for --{name}")
        return value

    if number("learning_rate") <= 0:
        raise _bad("learning_rate", args.learning_rate, "must be > 0 (no step would change the model)",
                   "pass e.g. --learning_rate 0.01 (the paper's value)")  # fmt: skip
    epochs, max_steps = number("num_train_epochs"), number("max_steps")
    if epochs < 0:
        raise _bad("num_train_epochs", epochs, "is negative", "pass a positive number of epochs (paper: 10)")
    if max_steps < -1:
        raise _bad("max_steps", max_steps, "is below -1", "pass a positive number of steps, or -1 to count epochs")
    if max_steps <= 0 and epochs <= 0:
        raise _bad("num_train_epochs", epochs, f"with max_steps={max_steps} trains no step at all",
                   "pass --num_train_epochs > 0 or --max_steps > 0")  # fmt: skip
    for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
        if number(name) < 1 or int(getattr(args, name)) != getattr(args, name):
            raise _bad(name, getattr(args, name), "must be a whole number >= 1", f"pass e.g. --{name} 1")
    for name in ("weight_decay", "max_grad_norm", "dataloader_num_workers"):  # TrainingArguments checks warmup_steps
        if number(name) < 0:
            raise _bad(name, getattr(args, name), "must be >= 0", f"pass --{name} 0 to turn it off")
    if not 0 <= number("label_smoothing_factor") < 1:
        raise _bad("label_smoothing_factor", args.label_smoothing_factor, "must be in [0, 1)",
                   "pass e.g. --label_smoothing_factor 0.1, or 0 for none")  # fmt: skip
    for name in ("adam_beta1", "adam_beta2"):
        if not 0 <= number(name) < 1:
            raise _bad(name, getattr(args, name), "must be in [0, 1)", f"pass e.g. --{name} 0.9")
    if number("adam_epsilon") <= 0:
        raise _bad("adam_epsilon", args.adam_epsilon, "must be > 0", "pass e.g. --adam_epsilon 1e-8")
    if not 0 <= number("seed") < 2**32 or int(args.seed) != args.seed:
        raise _bad("seed", args.seed, "must be a whole number in [0, 2**32)", "pass e.g. --seed 42")
    for name in ("logging_steps", "save_steps", "eval_steps"):
        value = getattr(args, name, None)
        # eval_steps 0 (or unset) means "every logging_steps" to TrainingArguments.
        if value is not None and (number(name) < 0 or (value == 0 and name != "eval_steps")):
            raise _bad(name, value, "must be > 0 (a whole number of steps, or a fraction of the run below 1)",
                       f"pass e.g. --{name} 10")  # fmt: skip
    if args.save_total_limit is not None and number("save_total_limit") < 1:
        raise _bad("save_total_limit", args.save_total_limit, "must be >= 1", "pass --save_total_limit 1 or drop it")


@dataclass
class FSTConfig(TrainingArguments):
    r"""Configuration for [`FSTTrainer`]: `TrainingArguments` plus the FST fields.

    The defaults follow the FST paper (CIFAR-10 settings), which differ from `TrainingArguments`:

    | field | FSTConfig | TrainingArguments |
    | --- | --- | --- |
    | `learning_rate` | 0.01 | 5e-5 |
    | `num_train_epochs` | 10 | 3 |
    | `per_device_train_batch_size` | 128 | 8 |
    | `per_device_eval_batch_size` | 256 | 8 |
    | `optim` / `optim_args` | `sgd` / `momentum=0.9` | `adamw_torch_fused` / none |
    | `lr_scheduler_type` | `cosine` | `linear` |
    | `max_grad_norm` | 0 (no clipping) | 1.0 |
    | `remove_unused_columns` | False (image transforms need the raw columns) | True |
    | `logging_steps` | 10 | 500 |
    | `logging_nan_inf_filter` | False (a non-finite loss stops the run) | True |

    `weight_decay` stays 0, as in the paper. For GTSRB the paper uses 15 epochs and alpha 0.1; for
    CIFAR-100 and Tiny-ImageNet lr 0.001 and alpha 0.001.

    Parameters:
        tuning_mode (`str`, defaults to `"fst"`):
            One of `fst`, `ft`, `lp`, `ft-init`, `fe-tuning` (see `TUNING_MODES`).
        fst_alpha (`float` or `"auto"`, defaults to `0.2`):
            Weight of the feature-shift penalty alpha * <W, W0> (raw inner product of the head weight with the
            original head weight, bias excluded). Used in `fst` mode only. `"auto"` chooses it from a clean-accuracy
            budget (`max_accuracy_drop`) on a held-out part of the tuning data, without any attack knowledge: see
            `hf_fst.tuning.search`.
        normalize_fst_alpha (`bool`, defaults to `False`):
            Divide the penalty by ||W0||^2, so that `fst_alpha` means the same strength on every model: with the norm
            projection the penalty then ranges over [-alpha, +alpha]. The paper's alpha equals the normalised value
            divided by ||W0||^2 (26-29 for small CIFAR-10 ResNets; the trainer reports both). Off: the paper's raw
            penalty.
        max_accuracy_drop (`float`, defaults to `0.02`):
            With `fst_alpha="auto"`: the clean accuracy (a fraction: 0.02 is 2 points) that the search may give up
            on the held-out part, against the input model.
        fst_validation_fraction (`float`, defaults to `0.2`):
            With `fst_alpha="auto"`: the share of the tuning data held out (seeded, stratified by label) to judge
            each candidate strength.
        fst_validation_folds (`int`, *optional*):
            With `fst_alpha="auto"`: how many disjoint held-out parts (each `fst_validation_fraction` of the data)
            every candidate is judged on, pooled; at most 1 / `fst_validation_fraction`. More folds give a steadier
            estimate on small tuning sets (with 5 x 0.2 every image is held out once) at that many times the cost.
            Unset: as few as hold out 200 images at the nominal fraction (1 for 1,000 tuning images, 4 for 270).
        head_name (`str`, *optional*):
            Dotted path of the classification head (e.g. `classifier`, `classifier.1`, `fc`). Found automatically
            when unset: the `nn.Linear` outside the backbone with `num_labels` outputs.
        project_head_norm (`bool`, *optional*):
            Rescale the head weight to ||W0|| after every optimizer step. Unset means on for `fst` and off for the
            baselines; `True` applies it in every mode, as the official FST code does, to reproduce its numbers.
    """

    tuning_mode: str = field(
        default="fst",
        metadata={"help": "Tuning mode.", "choices": list(TUNING_MODES)},
    )
    # `str | None` in the union makes HfArgumentParser pass the flag's text through, so `--fst_alpha auto` parses.
    fst_alpha: float | str | None = field(
        default=0.2,
        metadata={
            "help": "Weight alpha of the FST penalty alpha * <W, W0> (fst mode only; paper: 0.2 on CIFAR-10), or "
            "'auto' to choose the strongest shift within --max_accuracy_drop."
        },
    )
    normalize_fst_alpha: bool = field(
        default=False,
        metadata={"help": "Divide the penalty by ||W0||^2 so that fst_alpha is scale-free (paper alpha x ||W0||^2)."},
    )
    max_accuracy_drop: float = field(
        default=0.02,
        metadata={"help": "fst_alpha=auto: clean accuracy (fraction) the search may give up on held-out tuning data."},
    )
    fst_validation_fraction: float = field(
        default=0.2,
        metadata={"help": "fst_alpha=auto: share of the tuning data held out (stratified) to judge each strength."},
    )
    fst_validation_folds: int | None = field(
        default=None,
        metadata={
            "help": "fst_alpha=auto: disjoint held-out parts each strength is judged on (cost x folds); unset: "
            "enough to judge on at least 200 images."
        },
    )
    head_name: str | None = field(
        default=None,
        metadata={"help": "Dotted path of the classification head; found automatically when unset."},
    )
    project_head_norm: bool | None = field(
        default=None,
        metadata={
            "help": "Project the head weight to ||W0|| after each optimizer step. Unset: only in fst mode; "
            "true: in every mode (as the official FST code does)."
        },
    )

    # Paper defaults that differ from TrainingArguments.
    learning_rate: float = field(default=0.01, metadata={"help": "Initial learning rate (paper: 0.01)."})
    num_train_epochs: float = field(default=10.0, metadata={"help": "Tuning epochs (paper: 10 on CIFAR-10)."})
    per_device_train_batch_size: int = field(default=128, metadata={"help": "Batch size per device (paper: 128)."})
    per_device_eval_batch_size: int = field(default=256, metadata={"help": "Evaluation batch size per device."})
    optim: str = field(default="sgd", metadata={"help": "Optimizer (paper: SGD with momentum 0.9)."})
    optim_args: str | None = field(default="momentum=0.9", metadata={"help": "Optimizer arguments."})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "Learning-rate schedule (paper: cosine)."})
    max_grad_norm: float = field(default=0.0, metadata={"help": "Gradient clipping norm; 0 disables (paper: none)."})
    remove_unused_columns: bool = field(
        default=False,
        metadata={"help": "Keep raw columns so that `with_transform` preprocessing sees the images."},
    )
    logging_steps: float = field(default=10, metadata={"help": "Log every X optimizer steps."})
    logging_nan_inf_filter: bool = field(
        default=False,
        metadata={
            "help": "Off: a non-finite loss stops FST training with an error, so there is nothing to filter, and "
            "the filter would cost a host-device sync every step."
        },
    )

    def __post_init__(self) -> None:
        mode = normalize_tuning_mode(self.tuning_mode)
        if mode not in TUNING_MODES:
            raise ValueError(
                f"tuning_mode={self.tuning_mode!r} is not a tuning mode; use one of {', '.join(TUNING_MODES)}"
            )
        self.tuning_mode = mode
        self.fst_alpha = parse_fst_alpha(self.fst_alpha)
        for name in ("max_accuracy_drop", "fst_validation_fraction"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
                raise _bad(name, value, "must be a fraction in (0, 1)", f"pass e.g. --{name} 0.02 (2 points)"
                           if name == "max_accuracy_drop" else f"pass e.g. --{name} 0.2")  # fmt: skip
        folds = self.fst_validation_folds
        if folds is not None and (isinstance(folds, bool) or not isinstance(folds, int) or folds < 1):
            raise _bad("fst_validation_folds", folds, "must be an integer >= 1", "pass e.g. --fst_validation_folds 5")
        if folds is not None and folds * self.fst_validation_fraction > 1 + 1e-9:
            raise _bad("fst_validation_folds", folds,
                       f"needs {folds} disjoint held-out parts of fst_validation_fraction={self.fst_validation_fraction}",
                       f"pass at most {int(1 / self.fst_validation_fraction + 1e-9)} folds or a smaller fraction")  # fmt: skip
        if self.head_name is not None and not str(self.head_name).strip():
            self.head_name = None
        check_training_numbers(self)
        super().__post_init__()

    def __getstate__(self) -> dict:
        """Pickle without the Hub token: the Trainer saves and pushes `training_args.bin`, a pickle of these args."""
        state = self.__dict__.copy()
        state["hub_token"] = None
        return state

    @property
    def reinitializes_head(self) -> bool:
        """Whether this mode starts from a freshly initialised head."""
        return self.tuning_mode in REINITIALIZED_HEAD_MODES

    @property
    def projects_head_norm(self) -> bool:
        """Whether the head weight is projected to ||W0|| after every optimizer step."""
        return self.tuning_mode == "fst" if self.project_head_norm is None else bool(self.project_head_norm)

    @property
    def reads_whole_head(self) -> bool:
        """Whether the penalty or the norm projection reads the whole head weight (so it must not be sharded)."""
        return self.uses_fst_penalty or self.projects_head_norm

    @property
    def requests_fsdp(self) -> bool:
        """Whether the Trainer would shard the model: `fsdp=`, or an `accelerate launch` FSDP config (which sets
        ACCELERATE_USE_FSDP). Known before the Trainer is built, so FSTTrainer refuses before any set-up."""
        return bool(self.fsdp) or os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"

    @property
    def searches_fst_alpha(self) -> bool:
        """Whether the trainer chooses alpha itself (`fst_alpha="auto"` in `fst` mode)."""
        return self.tuning_mode == "fst" and self.fst_alpha == AUTO

    @property
    def uses_fst_penalty(self) -> bool:
        """Whether the loss carries the alpha * <W, W0> term."""
        return self.tuning_mode == "fst" and (self.fst_alpha == AUTO or self.fst_alpha > 0)
