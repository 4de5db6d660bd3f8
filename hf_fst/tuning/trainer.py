"""`FSTTrainer`: Feature Shift Tuning (and the FT / LP / FT-init / FE-tuning baselines) as a `Trainer`."""

from __future__ import annotations

import copy
import inspect
import os
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import get_last_checkpoint

from hf_fst.heads import find_linear_head, project_weight_norm_, reinitialize_linear_
from hf_fst.tuning.config import FSTConfig

FST_STATE_NAME = "fst_state.safetensors"
"""File written next to each checkpoint with W0 and ||W0||, so a resumed run continues exactly."""


class _ProjectHeadCallback(TrainerCallback):
    """Calls `trainer.project_head()` once per optimizer step (after `step`, before `zero_grad`)."""

    def __init__(self, trainer: FSTTrainer) -> None:
        self.trainer = trainer

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.trainer.project_head()


class _SaveFSTStateCallback(TrainerCallback):
    """Writes W0 and ||W0|| into every checkpoint folder the Trainer saves."""

    def __init__(self, trainer: FSTTrainer) -> None:
        self.trainer = trainer

    def on_save(self, args, state, control, **kwargs):
        if args.should_save:
            folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
            if os.path.isdir(folder):
                self.trainer.save_fst_state(folder)


class FSTTrainer(Trainer):
    """A `Trainer` that purifies a possibly backdoored classifier by Feature Shift Tuning.

    Construction does everything that defines the starting point of tuning, so that
    `trainer.model` right after `__init__` is the model that training begins from:

    1. the model is deep-copied (the object passed in is never modified);
    2. the linear head is located (`find_head`) and W0 = its weight and ||W0|| are kept;
    3. the head is re-initialised in `fst`, `ft-init` and `fe-tuning` modes (`reinitialize_head`);
    4. parameters are frozen as the mode says (`freeze_parameters`): `lp` trains the head only,
       `fe-tuning` everything but the head. Parameters frozen by the caller stay frozen.

    During training the loss is cross-entropy plus, in `fst` mode, `fst_penalty()` =
    alpha * <W, W0>; both parts are logged (`ce_loss`, `fst_penalty`). After every optimizer step
    `project_head()` rescales the head weight to ||W0||. The penalty, the projection and the head
    lookup are methods: override them to try a variant of the method.

    Batches are dicts with the model's inputs (`pixel_values`) and `labels`; keys that the
    model's `forward` does not take (such as `is_poisoned`) are ignored.
    """

    # The loss below is a per-batch mean: let the Trainer divide it by the accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(
        self,
        model: nn.Module | None = None,
        args: FSTConfig | None = None,
        *trainer_args: Any,
        model_init: Any = None,
        **trainer_kwargs: Any,
    ) -> None:
        if model_init is not None:
            raise ValueError(
                "model_init is not supported by FSTTrainer: W0 must come from one fixed model; pass model= instead"
            )
        if model is None:
            raise ValueError("model= is required: pass the (possibly backdoored) classifier to purify")
        if args is None:
            args = FSTConfig(output_dir="trainer_output")
        if not isinstance(args, FSTConfig):
            raise TypeError(
                f"args must be an FSTConfig, got {type(args).__name__}; build it with FSTConfig(**training_args_kwargs)"
            )
        # Look the head up on the caller's model first: a bad model fails before any copy or set-up.
        self.args = args
        self.head_name, _ = self.find_head(model)
        super().__init__(copy.deepcopy(model), args, *trainer_args, **trainer_kwargs)
        if self.is_fsdp_enabled and (self.args.uses_fst_penalty or self.args.projects_head_norm):
            raise ValueError(
                "FSDP shards the head weight, so the FST penalty and norm projection would see one shard; "
                "run FST with DDP (accelerate launch --multi_gpu) instead of an FSDP config"
            )

        head = self.head
        self.fst_w0 = head.weight.detach().clone()
        self.fst_w0_norm = self.fst_w0.norm()
        if self.args.reinitializes_head:
            self.reinitialize_head()
        self.freeze_parameters()
        if not any(p.requires_grad for p in self.model.parameters()):
            raise ValueError(
                f"tuning_mode={self.args.tuning_mode!r} leaves no trainable parameter in this model "
                f"(head {self.head_name!r}); unfreeze parameters (requires_grad=True) or choose another tuning_mode"
            )
        forward = inspect.signature(self.model.forward).parameters
        self._model_input_names = {n for n, p in forward.items() if p.kind is not p.VAR_KEYWORD and n != "labels"}
        self._logged_parts: dict[str, list[torch.Tensor]] = {"ce_loss": [], "fst_penalty": []}
        if self.args.projects_head_norm:
            self.add_callback(_ProjectHeadCallback(self))
        self.add_callback(_SaveFSTStateCallback(self))

    # ----------------------------------------------------------------------------------------- head
    @property
    def head(self) -> nn.Linear:
        """The classification head of `self.model` (shared with any DDP wrapper)."""
        return self.model.get_submodule(self.head_name)

    def find_head(self, model: nn.Module) -> tuple[str, nn.Linear]:
        """Return `(dotted_name, nn.Linear)` of the head; override for exotic architectures."""
        return find_linear_head(model, self.args.head_name)

    def reinitialize_head(self) -> None:
        """Re-draw the head as a fresh `nn.Linear` would, from a generator seeded with `args.seed`."""
        generator = torch.Generator().manual_seed(self.args.seed)
        reinitialize_linear_(self.head, generator)

    def freeze_parameters(self) -> None:
        """Freeze what the mode says: everything but the head for `lp`, the head for `fe-tuning`."""
        mode = self.args.tuning_mode
        if mode not in ("lp", "fe-tuning"):
            return
        head_params = {id(p) for p in self.head.parameters()}
        for param in self.model.parameters():
            is_head = id(param) in head_params
            if (mode == "lp" and not is_head) or (mode == "fe-tuning" and is_head):
                param.requires_grad_(False)

    def fst_penalty(self) -> torch.Tensor:
        """alpha * <W, W0>: pushes the new head away from the backdoored one (bias excluded)."""
        weight = self.head.weight
        return self.args.fst_alpha * (weight * self.fst_w0.to(weight.dtype)).sum()

    def project_head(self) -> None:
        """Rescale the head weight to ||W0|| (called after every optimizer step when enabled)."""
        project_weight_norm_(self.head.weight, self.fst_w0_norm)

    # ----------------------------------------------------------------------------------------- loss
    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ):
        """Cross-entropy on the logits, plus `fst_penalty()` when training in `fst` mode.

        The cross-entropy is computed here rather than by the model because several
        transformers vision models drop `num_items_in_batch`, which mis-scales their own loss
        under gradient accumulation and DDP.
        """
        if "labels" not in inputs:
            raise ValueError("FSTTrainer batches need a 'labels' key; make your collator or transform return one")
        labels = inputs["labels"]
        outputs = model(**{k: v for k, v in inputs.items() if k in self._model_input_names})
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
        loss = F.cross_entropy(logits.float(), labels)
        if model.training:  # evaluation reports plain cross-entropy
            self._logged_parts["ce_loss"].append(loss.detach())
            if self.args.uses_fst_penalty:
                penalty = self.fst_penalty()
                self._logged_parts["fst_penalty"].append(penalty.detach())
                loss = loss + penalty.float()
            self.check_finite(loss)
        return (loss, outputs) if return_outputs else loss

    def check_finite(self, loss: torch.Tensor) -> None:
        """Stop at the first non-finite training loss instead of training (and saving) a broken model.

        Under DDP the flag is agreed across ranks, so every rank stops together instead of waiting forever in
        the next gradient all-reduce.
        """
        finite = torch.isfinite(loss.detach()).to(torch.int32)
        if self.args.world_size > 1 and dist.is_available() and dist.is_initialized():
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        if not finite.item():
            raise FloatingPointError(
                f"non-finite training loss ({loss.item()}) at optimizer step {self.state.global_step + 1} "
                f"(epoch {self.state.epoch or 0:.2f}); lower learning_rate (now {self.args.learning_rate:g})"
                + (f" or fst_alpha (now {self.args.fst_alpha:g})" if self.args.uses_fst_penalty else "")
            )

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        """Add the mean cross-entropy and FST penalty since the last training log."""
        if "loss" in logs:
            for key, values in self._logged_parts.items():
                if values:
                    logs[key] = round(torch.stack(values).mean().item(), 6)
                    values.clear()
        super().log(logs, *args, **kwargs)

    # ------------------------------------------------------------------------------------- checkpoints
    def save_fst_state(self, folder: str) -> None:
        """Write W0 and ||W0|| (not model buffers, so they never leak into the saved model)."""
        tensors = {"w0": self.fst_w0.detach().cpu().contiguous(), "w0_norm": self.fst_w0_norm.detach().cpu()}
        metadata = {"head_name": self.head_name, "tuning_mode": self.args.tuning_mode}
        # Written last in a checkpoint and renamed into place, so its presence marks a complete checkpoint.
        tmp = os.path.join(folder, FST_STATE_NAME + ".tmp")
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, os.path.join(folder, FST_STATE_NAME))

    def load_fst_state(self, folder: str) -> None:
        """Restore W0 and ||W0|| from a checkpoint written by `save_fst_state`."""
        path = os.path.join(folder, FST_STATE_NAME)
        if not os.path.isfile(path):
            raise ValueError(
                f"resume_from_checkpoint={folder!r} has no {FST_STATE_NAME}: it was not written by FSTTrainer; "
                f"resume from a checkpoint of an FSTTrainer run or start without resume_from_checkpoint"
            )
        state = load_file(path)
        if state["w0"].shape != self.fst_w0.shape:
            raise ValueError(
                f"resume_from_checkpoint={folder!r} holds W0 of shape {tuple(state['w0'].shape)} but head "
                f"{self.head_name!r} has {tuple(self.fst_w0.shape)}; resume with the model the run started from"
            )
        device = self.fst_w0.device
        self.fst_w0 = state["w0"].to(device=device, dtype=self.fst_w0.dtype)
        self.fst_w0_norm = state["w0_norm"].to(device=device)

    def last_complete_checkpoint(self) -> str | None:
        """Newest `checkpoint-N` in `output_dir` that holds its FST state, or None.

        The FST state is written last, so a checkpoint cut short by a crash lacks it and must not be resumed from.
        """
        if not os.path.isdir(self.args.output_dir):
            return None
        found = []
        for name in os.listdir(self.args.output_dir):
            step = name.removeprefix("checkpoint-")
            folder = os.path.join(self.args.output_dir, name)
            if (
                name.startswith("checkpoint-")
                and step.isdigit()
                and os.path.isfile(os.path.join(folder, FST_STATE_NAME))
            ):
                found.append((int(step), folder))
        return max(found)[1] if found else None

    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any):
        """`Trainer.train`, restoring W0 and ||W0|| first when resuming, and leaving identical models on all ranks."""
        if resume_from_checkpoint is True:
            resume_from_checkpoint = (
                self.last_complete_checkpoint() or get_last_checkpoint(self.args.output_dir) or True
            )
        if isinstance(resume_from_checkpoint, (str, os.PathLike)):
            self.load_fst_state(os.fspath(resume_from_checkpoint))
        output = super().train(resume_from_checkpoint, *args, **kwargs)
        self.sync_buffers()
        return output

    def sync_buffers(self) -> None:
        """Copy rank 0's buffers (BatchNorm running statistics) to every rank after distributed training.

        DDP keeps parameters equal, but each rank updates its buffers in its own last forward pass; without
        this the ranks would hold slightly different models and only rank 0 would match the saved one.
        """
        if self.args.world_size > 1 and dist.is_available() and dist.is_initialized():
            for buffer in self.model.buffers():
                dist.broadcast(buffer.data, src=0)
