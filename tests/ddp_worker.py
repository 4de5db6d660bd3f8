"""Worker for the DDP test: tunes a tiny ViT with FSTTrainer and saves each rank's parameters.

Run as `accelerate launch ... tests/ddp_worker.py OUT_DIR GRAD_ACCUM` (or plain `python` for one process).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tiny_models import random_image_rows, tiny_vit  # noqa: E402

from hf_fst import FSTConfig, FSTTrainer  # noqa: E402


def main() -> None:
    out_dir, accumulation = Path(sys.argv[1]), int(sys.argv[2])
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
    trainer = FSTTrainer(model=tiny_vit(), args=args, train_dataset=random_image_rows(16))
    trainer.train()
    rank = trainer.args.process_index
    tensors = {n: p.detach().cpu().contiguous() for n, p in trainer.model.named_parameters()}
    metadata = {"world_size": str(trainer.args.world_size), "steps": str(trainer.state.global_step)}
    save_file(tensors, str(out_dir / f"rank{rank}.safetensors"), metadata=metadata)
    # Leave the process group before exit: gloo torn down by the interpreter's exit can abort a rank on a busy machine.
    trainer.accelerator.wait_for_everyone()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
