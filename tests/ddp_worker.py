"""Worker for the DDP test: tunes a tiny model with FSTTrainer and saves each rank's parameters.

Run as `accelerate launch ... tests/ddp_worker.py OUT_DIR GRAD_ACCUM [resnet]` (or plain `python` for one process).
With `resnet` (BatchNorm) it saves each rank's whole state dict, buffers included, and its buffers as they were
before the trainer synchronised them (`rank{r}-own.safetensors`).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tiny_models import random_image_rows, tiny_resnet, tiny_vit  # noqa: E402

from hf_fst import FSTConfig, FSTTrainer  # noqa: E402


class RecordingTrainer(FSTTrainer):
    """Keeps this rank's own buffers (BatchNorm statistics) from just before they are synchronised."""

    def sync_buffers(self) -> None:
        self.own_buffers = {n: b.detach().cpu().clone() for n, b in self.model.named_buffers()}
        super().sync_buffers()


def main() -> None:
    out_dir, accumulation = Path(sys.argv[1]), int(sys.argv[2])
    resnet = sys.argv[3:] == ["resnet"]
    args = FSTConfig(
        output_dir=str(out_dir / "run"),
        use_cpu=True,
        report_to="none",
        disable_tqdm=True,
        save_strategy="no",
        num_train_epochs=3,
        per_device_train_batch_size=8,
        gradient_accumulation_steps=accumulation,
        learning_rate=0.05,
        fst_alpha=0.5,
        seed=11,
    )
    model = tiny_resnet() if resnet else tiny_vit()
    trainer = RecordingTrainer(model=model, args=args, train_dataset=random_image_rows(16))
    trainer.train()
    rank = trainer.args.process_index
    named = trainer.model.state_dict().items() if resnet else trainer.model.named_parameters()
    tensors = {n: p.detach().cpu().contiguous() for n, p in named}
    metadata = {"world_size": str(trainer.args.world_size), "steps": str(trainer.state.global_step)}
    save_file(tensors, str(out_dir / f"rank{rank}.safetensors"), metadata=metadata)
    if resnet:
        save_file(trainer.own_buffers, str(out_dir / f"rank{rank}-own.safetensors"))
    # Leave the process group before exit: gloo torn down by the interpreter's exit can abort a rank on a busy machine.
    trainer.accelerator.wait_for_everyone()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
