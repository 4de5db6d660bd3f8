"""`FSTTrainer`: Feature Shift Tuning (and the FT / LP / FT-init / FE-tuning baselines) as a `Trainer`."""

from __future__ import annotations

import copy
import gc
import inspect
import json
import os
import shutil
from collections.abc import Mapping
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, IntervalStrategy, get_last_checkpoint

from hf_fst.forward import logits_of
from hf_fst.heads import find_linear_head, project_weight_norm_, reinitialize_linear_
from hf_fst.tuning.card import trainer_model_card
from hf_fst.tuning.config import FSTConfig
from hf_fst.tuning.contract import repoint_optimizer
from hf_fst.tuning.search import StrengthSearch, search_fst_alpha
from hf_fst.weights import FST_STATE_FILE

FST_STATE_NAME = FST_STATE_FILE
"""File written next to each checkpoint with W0 and ||W0||, so a resumed run continues exactly."""


FSDP_REFUSAL = (
    "FSDP shards the head weight, so the FST penalty and norm projection would see one shard; "
    "run FST with DDP (accelerate launch --multi_gpu) instead of fsdp= or an FSDP accelerate config"
)


class _FSTCallback(TrainerCallback):
    """Projects the head after every optimizer step and stops on a non-finite loss before anything uses it.

    The finiteness flag lives on the device and is read only when the step's loss is about to be logged, a
    checkpoint saved, an evaluation run or training ended, so that no step waits on a host-device sync.
    """

    def __init__(self, trainer: FSTTrainer) -> None:
        self.trainer = trainer

    def on_optimizer_step(self, args, state, control, **kwargs):
        if self.trainer.args.projects_head_norm:
            self.trainer.project_head()

    def on_step_end(self, args, state, control, **kwargs):
        # Runs after the Trainer's own flow callback, which has set these flags for this step (the last step
        # included: should_training_stop).
        if control.should_log or control.should_save or control.should_evaluate or control.should_training_stop:
            self.trainer.raise_if_nonfinite()

    def on_epoch_end(self, args, state, control, **kwargs):
        self.trainer.raise_if_nonfinite()


class FSTTrainer(Trainer):
    """A `Trainer` that purifies a possibly backdoored classifier by Feature Shift Tuning.

    Construction does everything that defines the starting point of tuning, so that
    `trainer.model` right after `__init__` is the model that training begins from:

    1. the model is deep-copied where it lives, before the Trainer moves it (the object passed in is never
       modified); an optimizer passed in `optimizers=` is re-pointed at the copy;
    2. the linear head is located (`find_head`) and W0 = its weight and ||W0|| are kept, in float32;
    3. the head is re-initialised in `fst`, `ft-init` and `fe-tuning` modes (`reinitialize_head`);
    4. parameters are frozen as the mode says (`freeze_parameters`): `lp` trains the head only,
       `fe-tuning` everything but the head. Parameters frozen by the caller stay frozen.

    During training the loss is cross-entropy (label-smoothed with `label_smoothing_factor`, or the
    `compute_loss_func` given) plus, in `fst` mode, `fst_penalty()` = alpha * <W, W0>; both parts are logged
    (`ce_loss`, `fst_penalty`). After every optimizer step `project_head()` rescales the head weight to ||W0||.
    The penalty, the projection and the head lookup are methods: override them to try a variant of the method.
    Every `Trainer` argument is honoured or refused at construction: see `hf_fst.tuning.contract`.

    Batches are dicts with the model's inputs (`pixel_values`) and `labels`; keys that the
    model's `forward` does not take (such as `is_poisoned`) are ignored.
    """

    def __init__(
        self,
        model: nn.Module | None = None,
        args: FSTConfig | None = None,
        data_collator: Any = None,
        train_dataset: Any = None,
        eval_dataset: Any = None,
        processing_class: Any = None,
        model_init: Any = None,
        compute_loss_func: Any = None,
        compute_metrics: Any = None,
        callbacks: list[TrainerCallback] | None = None,
        optimizers: tuple[Any, Any] = (None, None),
        optimizer_cls_and_kwargs: Any = None,
        preprocess_logits_for_metrics: Any = None,
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
        if train_dataset is not None and hasattr(train_dataset, "__len__") and len(train_dataset) == 0:
            raise ValueError("train_dataset is empty: tuning on no data would report the input model as purified")
        if args.requests_fsdp and args.reads_whole_head:
            raise ValueError(FSDP_REFUSAL)
        # Look the head up on the caller's model first: a bad model fails before any copy or set-up.
        self.args = args
        self.head_name, head = self.find_head(model)
        if self.args.tuning_mode in ("fst", "lp", "ft-init") and not all(p.requires_grad for p in head.parameters()):
            raise ValueError(
                f"tuning_mode={self.args.tuning_mode!r} trains the head, but head {self.head_name!r} is frozen "
                "(requires_grad=False); unfreeze it, or for a PEFT model list it in modules_to_save"
            )
        if args.searches_fst_alpha:
            if optimizers is not None and optimizers != (None, None):
                raise ValueError(
                    "fst_alpha='auto' tunes several candidate models, which one optimizer cannot serve; drop optimizers= "
                    "or pass a number for fst_alpha"
                )
            args = copy.copy(args)  # the chosen alpha is written into the trainer's copy, not the caller's config
            # The input head, for the search's reference accuracy (the copy below re-initialises its own).
            self._input_head = {k: v.detach().cpu().clone() for k, v in head.state_dict().items()}
        self.fst_alpha_search: StrengthSearch | None = None
        optimizer, scheduler = optimizers if optimizers is not None else (None, None)
        # Copied where the caller's model lives: the Trainer then moves only the copy to the device.
        tuned = copy.deepcopy(model)
        repoint_optimizer(optimizer, scheduler, model, tuned)
        super().__init__(
            model=tuned,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            compute_loss_func=compute_loss_func,
            compute_metrics=compute_metrics,
            callbacks=callbacks,
            optimizers=(optimizer, scheduler),
            optimizer_cls_and_kwargs=optimizer_cls_and_kwargs,
            preprocess_logits_for_metrics=preprocess_logits_for_metrics,
        )
        if self.is_fsdp_enabled and self.args.reads_whole_head:
            raise ValueError(FSDP_REFUSAL)  # FSDP switched on some other way (an accelerate state set up earlier)
        if self.args.searches_fst_alpha and self.args.world_size > 1:
            raise ValueError(
                "fst_alpha='auto' runs its search in one process; search on one process (or device), then launch the "
                "distributed run with the fst_alpha it chose"
            )
        if not self.label_names:
            raise ValueError("label_names=[]: FSTTrainer trains on the first label name; pass e.g. ['labels']")
        # The first label name is the training target; further ones (e.g. `original_label`) only reach metrics.
        self.label_key = self.label_names[0]
        # The task loss is a per-batch mean (the Trainer divides it by the accumulation steps), unless the caller's
        # compute_loss_func normalises over the whole accumulated batch, as it does in `Trainer`.
        self.loss_is_scaled_for_ga = compute_loss_func is not None
        # Our cross-entropy never reads num_items_in_batch: spare the Trainer counting (and gathering) it each step.
        self.model_accepts_loss_kwargs = False

        head = self.head
        self.fst_w0 = head.weight.detach().float().clone()
        self.fst_w0_norm = self.fst_w0.norm()
        if self.args.reinitializes_head:
            self.reinitialize_head()
        self.freeze_parameters()
        if not any(p.requires_grad for p in self.model.parameters()):
            raise ValueError(
                f"tuning_mode={self.args.tuning_mode!r} leaves no trainable parameter in this model "
                f"(head {self.head_name!r}); unfreeze parameters (requires_grad=True) or choose another tuning_mode"
            )
        # A PEFT wrapper's forward takes (*args, **kwargs): read the input names off the model it wraps.
        base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        forward = inspect.signature(base.forward).parameters
        self._model_input_names = {
            n for n, p in forward.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and n != "labels"
        }
        # Running sums of the logged loss parts, on the device (no sync until they are logged).
        self._part_sums: dict[str, torch.Tensor] = {}
        self._part_counts: dict[str, int] = {}
        self._first_bad_step: torch.Tensor | None = None
        self._first_bad_loss: torch.Tensor | None = None
        self.add_callback(_FSTCallback(self))

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
        """alpha * <W, W0>: pushes the new head away from the backdoored one (bias excluded), in float32.

        With `normalize_fst_alpha` the inner product is divided by ||W0||^2, so alpha is scale-free.
        """
        inner = (self.head.weight.float() * self.fst_w0).sum()
        if self.args.normalize_fst_alpha:
            inner = inner / self.fst_w0_norm.square()
        return self.args.fst_alpha * inner

    @property
    def fst_alpha_raw(self) -> float | None:
        """The penalty's weight in the paper's units (alpha on the raw inner product); None before `auto` chose."""
        if not isinstance(self.args.fst_alpha, float):
            return None
        scale = float(self.fst_w0_norm.square()) if self.args.normalize_fst_alpha else 1.0
        return self.args.fst_alpha / scale

    @property
    def fst_alpha_normalized(self) -> float | None:
        """The penalty's scale-free strength, alpha x ||W0||^2 (the penalty's bound under the norm projection)."""
        raw = self.fst_alpha_raw
        return None if raw is None else raw * float(self.fst_w0_norm.square())

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
        """The task loss on the logits, plus `fst_penalty()` when training in `fst` mode.

        The task loss is the caller's `compute_loss_func` if given, else cross-entropy with
        `label_smoothing_factor`. It is computed here rather than by the model because several transformers
        vision models drop `num_items_in_batch`, which mis-scales their own loss under gradient accumulation and DDP.
        """
        if self.label_key not in inputs:
            raise ValueError(
                f"FSTTrainer batches need a {self.label_key!r} key; make your collator or transform return one"
            )
        labels = inputs[self.label_key]
        outputs = model(**{k: v for k, v in inputs.items() if k in self._model_input_names})
        if self.compute_loss_func is not None:
            loss = self.compute_loss_func(outputs, labels, num_items_in_batch=num_items_in_batch)
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                loss = loss * self.accelerator.num_processes  # as `Trainer` does for a loss normalised over ranks
        else:
            loss = F.cross_entropy(
                logits_of(outputs).float(), labels, label_smoothing=self.args.label_smoothing_factor
            )
        if model.training:  # evaluation reports the task loss alone
            # Logged per batch: undo the whole-batch normalisation of a compute_loss_func over accumulation.
            steps = self.current_gradient_accumulation_steps if self.loss_is_scaled_for_ga else 1
            self._add_part("ce_loss", loss.detach() * steps)
            if self.args.uses_fst_penalty:
                penalty = self.fst_penalty()
                self._add_part("fst_penalty", penalty.detach())
                # The Trainer divides a per-batch loss by the accumulation steps; a whole-batch one (steps > 1 here)
                # it does not, so the penalty is divided here to count once per optimizer step.
                loss = loss + penalty / steps
            self._note_finite(loss)
        if not return_outputs:
            return loss
        if not isinstance(outputs, Mapping):
            # `Trainer.prediction_step` takes a tuple's first item for the loss and keeps the rest as predictions;
            # the model computed no loss here (no labels passed), so put ours first, or the logits would be dropped.
            outputs = (loss.detach(), *(outputs if isinstance(outputs, (tuple, list)) else (outputs,)))
        return loss, outputs

    def _add_part(self, key: str, value: torch.Tensor) -> None:
        self._part_sums[key] = self._part_sums[key] + value if key in self._part_sums else value.float()
        self._part_counts[key] = self._part_counts.get(key, 0) + 1

    def _note_finite(self, loss: torch.Tensor) -> None:
        """Remember, on the device and without a sync, the first optimizer step whose loss is not finite."""
        loss = loss.detach().float()
        if self._first_bad_step is None:
            self._first_bad_step = torch.zeros((), dtype=torch.long, device=loss.device)
            self._first_bad_loss = torch.zeros((), dtype=torch.float32, device=loss.device)
        first = ~torch.isfinite(loss) & (self._first_bad_step == 0)
        self._first_bad_step = torch.where(first, self.state.global_step + 1, self._first_bad_step)
        self._first_bad_loss = torch.where(first, loss, self._first_bad_loss)

    def raise_if_nonfinite(self) -> None:
        """Stop at the first non-finite training loss instead of logging, saving or returning a broken model.

        Checked (one sync) before each log, save, evaluation and at the end of every epoch; the step named is the
        first bad one, found on the device. Under DDP the ranks agree on it, so every rank stops together instead
        of waiting forever in the next collective.
        """
        if self._first_bad_step is None:
            return
        big = torch.iinfo(torch.long).max
        step = torch.where(self._first_bad_step > 0, self._first_bad_step, big)
        if self.args.world_size > 1 and dist.is_available() and dist.is_initialized():
            dist.all_reduce(step, op=dist.ReduceOp.MIN)
        step = int(step.item())
        if step == big:
            return
        loss = float(self._first_bad_loss.item()) if int(self._first_bad_step.item()) == step else float("nan")
        raise FloatingPointError(
            f"non-finite training loss ({loss}) at optimizer step {step} "
            f"(found at step {self.state.global_step}); lower learning_rate (now {self.args.learning_rate:g})"
            + (f" or fst_alpha (now {self.args.fst_alpha:g})" if self.args.uses_fst_penalty else "")
        )

    def _get_grad_norm(self, model: nn.Module, grad_norm: Any = None) -> Any:
        """The gradient norm, computed only for the steps that log it when nothing is clipped.

        Without clipping the Trainer computes (and multiplies every gradient by 1.0) each step only to log the last
        value; the logged numbers are unchanged by skipping the other steps.
        """
        if grad_norm is None and self.args.max_grad_norm <= 0 and not self._logs_next_step():
            return None
        return super()._get_grad_norm(model, grad_norm=grad_norm)

    def _logs_next_step(self) -> bool:
        if self.args.logging_strategy != IntervalStrategy.STEPS:
            return True
        step = self.state.global_step + 1
        every = self.state.logging_steps or 1
        first = step == 1 and self.args.logging_first_step
        return first or step % every == 0  # the Trainer's flow callback logs on no other step

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        """Add the mean cross-entropy and FST penalty since the last training log."""
        if "loss" in logs:
            for key, total in self._part_sums.items():
                logs[key] = round(total.item() / self._part_counts[key], 6)
            self._part_sums.clear()
            self._part_counts.clear()
        super().log(logs, *args, **kwargs)

    # ------------------------------------------------------------------------------------- checkpoints
    def save_fst_state(self, folder: str) -> None:
        """Write W0 and ||W0|| (not model buffers, so they never leak into the saved model)."""
        tensors = {"w0": self.fst_w0.detach().cpu().contiguous(), "w0_norm": self.fst_w0_norm.detach().cpu()}
        metadata = {
            "head_name": self.head_name,
            "tuning_mode": self.args.tuning_mode,
            "fst_alpha": str(self.args.fst_alpha),
            "normalize_fst_alpha": str(self.args.normalize_fst_alpha),
        }
        if self.fst_alpha_search is not None:
            metadata["fst_alpha_search"] = json.dumps(self.fst_alpha_search.to_dict())
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
        with safe_open(path, framework="pt") as handle:
            metadata = handle.metadata() or {}
        state = load_file(path)
        if self.args.searches_fst_alpha and "fst_alpha_search" in metadata:  # resume with the strength chosen
            self.fst_alpha_search = StrengthSearch(**{
                k: v for k, v in json.loads(metadata["fst_alpha_search"]).items() if k != "chosen_alpha"
            })  # fmt: skip
        if state["w0"].shape != self.fst_w0.shape:
            raise ValueError(
                f"resume_from_checkpoint={folder!r} holds W0 of shape {tuple(state['w0'].shape)} but head "
                f"{self.head_name!r} has {tuple(self.fst_w0.shape)}; resume with the model the run started from"
            )
        device = self.fst_w0.device
        self.fst_w0 = state["w0"].to(device=device, dtype=self.fst_w0.dtype)
        self.fst_w0_norm = state["w0_norm"].to(device=device)

    def _save_checkpoint(self, model: nn.Module, trial: Any) -> None:
        """`Trainer._save_checkpoint`, then the FST state (and, when pushing, the card), then the push.

        The Trainer pushes from inside its own save; here the push waits until the checkpoint holds W0 (so a pushed
        checkpoint can be resumed) and a model card, as TRL's trainers write one before every push.
        """
        push = self.args.push_to_hub
        self.args.push_to_hub = False
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.push_to_hub = push
        folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        if self.args.should_save and os.path.isdir(folder):
            if push:
                self.create_model_card()
                shutil.copy(os.path.join(self.args.output_dir, "README.md"), os.path.join(folder, "README.md"))
            self.save_fst_state(folder)
        if push:
            self._push_from_checkpoint(folder)

    def create_model_card(self, model_name: str | None = None, **kwargs: Any) -> None:
        """Write an FST model card to `output_dir/README.md` (what `Trainer.push_to_hub` uploads)."""
        if not self.is_world_process_zero():
            return
        name = model_name or (self.args.hub_model_id or os.path.basename(os.path.normpath(self.args.output_dir)))
        card = trainer_model_card(self, model_name=name.split("/")[-1], **kwargs)
        os.makedirs(self.args.output_dir, exist_ok=True)
        card.save(os.path.join(self.args.output_dir, "README.md"))

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
        if self.args.searches_fst_alpha:
            self.choose_fst_alpha()
        self._first_bad_step = self._first_bad_loss = None
        self._part_sums.clear()
        self._part_counts.clear()
        # The Trainer starts with a full gc.collect(), which scans every object of the process (about 0.35 s here,
        # 7% of a 40-step run). Objects that existed before train() are set aside for that scan; they are collected
        # again as usual afterwards. With auto_find_batch_size the collection frees memory between retries: kept.
        # A process that froze objects itself is left alone, since gc.unfreeze() would release its objects too.
        freeze = not self.args.auto_find_batch_size and gc.get_freeze_count() == 0
        if freeze:
            gc.freeze()
        try:
            output = super().train(resume_from_checkpoint, *args, **kwargs)
        finally:
            if freeze:
                gc.unfreeze()
        self.raise_if_nonfinite()
        self.sync_buffers()
        return output

    def choose_fst_alpha(self) -> None:
        """`fst_alpha="auto"`: search the strength (unless a resumed checkpoint holds it) and set it in `self.args`."""
        if self.fst_alpha_search is None:
            baseline = copy.deepcopy(self.model)
            baseline.get_submodule(self.head_name).load_state_dict(self._input_head)
            self.fst_alpha_search = search_fst_alpha(self, baseline)
        self.args.fst_alpha = self.fst_alpha_search.chosen
        self.args.normalize_fst_alpha = True

    def sync_buffers(self) -> None:
        """Copy rank 0's buffers (BatchNorm running statistics) to every rank after distributed training.

        DDP keeps parameters equal, but each rank updates its buffers in its own last forward pass; without
        this the ranks would hold slightly different models and only rank 0 would match the saved one.
        """
        if self.args.world_size > 1 and dist.is_available() and dist.is_initialized():
            for buffer in self.model.buffers():
                dist.broadcast(buffer.data, src=0)
