"""The callback that keeps an FST run on its rails: head projection after each step, and a stop on a bad loss."""

from __future__ import annotations

from typing import TYPE_CHECKING

from transformers import TrainerCallback

if TYPE_CHECKING:
    from hf_fst.tuning.trainer import FSTTrainer

__all__ = ["FSTCallback"]


class FSTCallback(TrainerCallback):
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
        last = state.max_steps and state.global_step >= state.max_steps
        if (
            last
            or control.should_log
            or control.should_save
            or control.should_evaluate
            or control.should_training_stop
        ):
            self.trainer.raise_if_nonfinite()

    def on_epoch_end(self, args, state, control, **kwargs):
        self.trainer.raise_if_nonfinite()
