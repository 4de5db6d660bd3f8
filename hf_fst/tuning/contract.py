"""What `FSTTrainer` does with each argument a `transformers.Trainer` user can pass.

`FSTTrainer` tunes a deep copy of the caller's model, so anything the caller built around the original (an
optimizer over its parameters, a scheduler over that optimizer) must be moved onto the copy, or it would train
nothing. Arguments whose meaning FST cannot keep are refused at construction, never silently dropped.
`TRAINER_ARGUMENTS` is the table the README shows; `tests/test_trainer_contract.py` holds a test per row.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["TRAINER_ARGUMENTS", "TrainerArgument", "render_trainer_arguments_table", "repoint_optimizer"]


@dataclass(frozen=True)
class TrainerArgument:
    """One row of the contract: a `Trainer`/`TrainingArguments` argument, its status and what it does here."""

    name: str
    status: str  # "supported" or "refused"
    how: str


TRAINER_ARGUMENTS: tuple[TrainerArgument, ...] = (
    TrainerArgument(
        "optimizers=(optimizer, scheduler)",
        "supported",
        "An optimizer built over the caller's model is re-pointed, parameter by parameter name, at the tuned copy "
        "before any step; its scheduler keeps working on it. Refused: an optimizer that already holds state, one "
        "holding a parameter of neither model, a scheduler of another optimizer, a scheduler without optimizer.",
    ),
    TrainerArgument(
        "optimizer_cls_and_kwargs=", "supported", "The optimizer is built by the Trainer over the tuned copy."
    ),
    TrainerArgument(
        "compute_loss_func=",
        "supported",
        "Replaces the cross-entropy, called as in `Trainer` (outputs, labels, num_items_in_batch); the FST penalty "
        "is added once per optimizer step on top.",
    ),
    TrainerArgument(
        "label_smoothing_factor", "supported", "Smoothed cross-entropy in training and evaluation, as `Trainer`."
    ),
    TrainerArgument("callbacks=", "supported", "Called as by `Trainer`; their `model` is the tuned copy."),
    TrainerArgument(
        "data_collator=", "supported", "Any collator whose batches hold the model's inputs and the labels."
    ),
    TrainerArgument(
        "label_names",
        "supported",
        "The first name is the training target (default `labels`); further names (e.g. `original_label` for RA) "
        "reach `compute_metrics` only.",
    ),
    TrainerArgument(
        "compute_metrics=, preprocess_logits_for_metrics=",
        "supported",
        "As `Trainer`; `hf_fst.metrics.compute_backdoor_metrics` gives C-Acc, ASR and RA for an eval_dataset dict.",
    ),
    TrainerArgument(
        "eval_strategy + backdoor metrics",
        "supported",
        "Periodic evaluation on `{'clean': ..., 'backdoor': ...}` logs eval_clean_* and eval_backdoor_* metrics.",
    ),
    TrainerArgument(
        "load_best_model_at_end + metric_for_best_model",
        "supported",
        "The best checkpoint's weights are loaded at the end; W0 is the same for every checkpoint of a run.",
    ),
    TrainerArgument(
        "gradient_accumulation_steps",
        "supported",
        "The penalty enters once per optimizer step; the head is projected after every optimizer step.",
    ),
    TrainerArgument("max_grad_norm", "supported", "Clips before the step, the projection runs after it."),
    TrainerArgument(
        "bf16 / fp16",
        "supported",
        "Mixed precision for the model; W0, the penalty and the norm projection stay in float32.",
    ),
    TrainerArgument("torch_compile", "supported", "The compiled model trains; penalty and projection run eagerly."),
    TrainerArgument(
        "gradient_checkpointing (activation_checkpointing)",
        "supported",
        "For models that support it, as `Trainer` (models that do not are refused by `Trainer`).",
    ),
    TrainerArgument(
        "push_to_hub + hub_strategy",
        "supported",
        "Every push carries an FST model card (README.md), in the repo root and in each pushed checkpoint, and "
        "pushed checkpoints hold the FST state needed to resume.",
    ),
    TrainerArgument(
        "PEFT model (LoRA on the backbone, head in modules_to_save)",
        "supported",
        "The head is the active adapter's trainable copy; a head that PEFT keeps frozen is refused.",
    ),
    TrainerArgument(
        "resume_from_checkpoint",
        "supported",
        "W0 and ||W0|| come back from the checkpoint's fst_state.safetensors; other checkpoints are refused.",
    ),
    TrainerArgument("model_init=", "refused", "W0 must come from one fixed model: pass model= instead."),
    TrainerArgument(
        "FSDP (fsdp=, an FSDP accelerate config)",
        "refused",
        "FSDP shards the head, so the penalty and the projection would see one shard: use DDP.",
    ),
)


def render_trainer_arguments_table() -> str:
    """The Markdown table of `TRAINER_ARGUMENTS`, as the README shows it."""
    lines = ["| argument | status | how |", "| --- | --- | --- |"]
    lines += [f"| `{row.name}` | {row.status} | {row.how} |" for row in TRAINER_ARGUMENTS]
    return "\n".join(lines)


def repoint_optimizer(
    optimizer: torch.optim.Optimizer | None,
    scheduler: object | None,
    source: nn.Module,
    target: nn.Module,
) -> None:
    """Make an optimizer built over `source`'s parameters train `target` (its deep copy) instead, in place.

    Parameters are matched by name. The scheduler needs no change when it belongs to this optimizer: it only reads
    and writes the optimizer's param groups, which stay the same objects.
    """
    if optimizer is None:
        if scheduler is not None:
            raise ValueError(
                "optimizers=(None, scheduler): a scheduler needs the optimizer it was built on; "
                "pass optimizers=(optimizer, scheduler), or neither"
            )
        return
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizers[0] must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    if len(optimizer.state) > 0:
        raise ValueError(
            "optimizers: the optimizer already holds state (it has taken steps), which belongs to the caller's "
            "model; pass a freshly built optimizer"
        )
    scheduler_optimizer = getattr(scheduler, "optimizer", optimizer)
    if scheduler is not None and scheduler_optimizer is not optimizer:
        raise ValueError(
            "optimizers=(optimizer, scheduler): the scheduler was built on another optimizer; build it on the "
            "optimizer you pass"
        )
    source_names = {id(p): name for name, p in source.named_parameters(remove_duplicate=False)}
    target_params = dict(target.named_parameters(remove_duplicate=False))
    target_ids = {id(p) for p in target_params.values()}
    for group in optimizer.param_groups:
        moved = []
        for param in group["params"]:
            if id(param) in target_ids:
                moved.append(param)
            elif id(param) in source_names:
                moved.append(target_params[source_names[id(param)]])
            else:
                raise ValueError(
                    f"optimizers: the optimizer holds a parameter of shape {tuple(param.shape)} that belongs to "
                    "neither the model passed as model= nor its tuned copy; build the optimizer over "
                    "model.parameters()"
                )
        group["params"] = moved
