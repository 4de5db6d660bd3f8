"""Throughput of `FSTTrainer` against a minimal hand-written FST loop, measured in one run.

Both train the same small HF ResNet on the same CIFAR-10 images (decoded once, in memory), with
the same batch size, optimizer, schedule, penalty and projection. Runs alternate (hand, trainer,
hand, trainer, ...) so machine noise hits both; the figure is the ratio of median throughputs.

    python benchmarks/trainer_throughput.py --num_images 1000 --epochs 10 --repeats 3
    # the short-run configuration: 40 steps on random data, basic-block ResNet (1.2M parameters)
    python benchmarks/trainer_throughput.py --random_data --num_images 1024 --epochs 5 --layer_type basic --repeats 5

On a machine with a GPU both loops run there (data on the GPU; `--device cpu` forces the CPU).
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from datasets import load_dataset
from transformers import ResNetConfig, ResNetForImageClassification

from hf_fst import FSTConfig, FSTTrainer
from hf_fst.benchmark.tensors import TensorImages

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = "uoft-cs/cifar10"  # or a local copy: --data path/to/cifar10


def load_images(path: Path, num_images: int) -> TensorImages:
    rows = load_dataset(str(path), split=f"train[:{num_images}]")
    images = np.stack([np.asarray(img.convert("RGB"), dtype=np.float32) for img in rows["img"]])
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).div_(255.0).sub_(0.5).div_(0.5).contiguous()
    return TensorImages(pixels, torch.tensor(rows["label"]))


def random_images(num_images: int, device: str) -> TensorImages:
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randn(num_images, 3, 32, 32, generator=generator)
    return TensorImages(pixels.to(device), torch.randint(0, 10, (num_images,), generator=generator).to(device))


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, *args, device: str = "cpu") -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one call; CPU time is less hurt by other load."""
    _sync(device)
    wall, cpu = time.perf_counter(), time.process_time()
    fn(*args)
    _sync(device)
    return time.perf_counter() - wall, time.process_time() - cpu


def hand_written_fst(model, dataset, epochs: int, batch_size: int, alpha: float, seed: int) -> None:
    """The loop a researcher would write by hand."""
    torch.manual_seed(seed)
    model = copy.deepcopy(model).to(dataset.images.device).train()
    head = model.classifier[1]
    w0 = head.weight.detach().clone()
    w0_norm = w0.norm()
    head.reset_parameters()
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * len(loader))
    for _ in range(epochs):
        for batch in loader:
            logits = model(pixel_values=batch["pixel_values"]).logits
            loss = F.cross_entropy(logits, batch["labels"]) + alpha * (head.weight * w0).sum()
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                head.weight.mul_(w0_norm / head.weight.norm())
            optimizer.zero_grad()
            scheduler.step()


def fst_trainer(model, dataset, epochs: int, batch_size: int, alpha: float, seed: int, out: str) -> None:
    args = FSTConfig(
        output_dir=out,
        use_cpu=dataset.images.device.type == "cpu",
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        num_train_epochs=epochs,
        per_device_train_batch_size=batch_size,
        fst_alpha=alpha,
        seed=seed,
        dataloader_num_workers=0,
        dataloader_pin_memory=False,
    )
    FSTTrainer(model=model, args=args, train_dataset=dataset).train()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=DEFAULT_DATA)
    parser.add_argument("--num_images", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--random_data", action="store_true", help="Random 32x32 images instead of CIFAR-10.")
    parser.add_argument("--layer_type", choices=["basic", "bottleneck"], default="bottleneck")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--output", type=Path, default=None, help="Default: benchmarks/results/<name>.json.")
    args = parser.parse_args()

    dataset = (
        random_images(args.num_images, args.device) if args.random_data else load_images(args.data, args.num_images)
    )
    if not args.random_data:
        dataset = TensorImages(dataset.images.to(args.device), dataset.labels.to(args.device))
    config = ResNetConfig(
        num_channels=3,
        embedding_size=32,
        hidden_sizes=[32, 64, 128, 256],
        depths=[1, 1, 1, 1],
        layer_type=args.layer_type,
    )
    config.num_labels = 10
    torch.manual_seed(0)
    model = ResNetForImageClassification(config)
    images = args.num_images * args.epochs

    # One warm-up of each so that first-call costs (allocator, kernels, imports) are not measured.
    with tempfile.TemporaryDirectory() as out:
        hand_written_fst(model, dataset, 1, args.batch_size, 0.2, 0)
        fst_trainer(model, dataset, 1, args.batch_size, 0.2, 0, out)
        runs = {"hand": [], "trainer": []}
        for repeat in range(args.repeats):
            common = (model, dataset, args.epochs, args.batch_size, 0.2, repeat)
            runs["hand"].append(timed(hand_written_fst, *common, device=args.device))
            runs["trainer"].append(timed(fst_trainer, *common, out, device=args.device))
            (hw, hc), (tw, tc) = runs["hand"][-1], runs["trainer"][-1]
            print(
                f"repeat {repeat}: wall img/s hand {images / hw:.0f} trainer {images / tw:.0f}; "
                f"CPU-time img/s hand {images / hc:.0f} trainer {images / tc:.0f}",
                flush=True,
            )

    hand = [images / wall for wall, _ in runs["hand"]]
    trainer = [images / wall for wall, _ in runs["trainer"]]
    hand_cpu = [images / cpu for _, cpu in runs["hand"]]
    trainer_cpu = [images / cpu for _, cpu in runs["trainer"]]
    result = {
        "command": "python benchmarks/trainer_throughput.py "
        f"--num_images {args.num_images} --epochs {args.epochs} --repeats {args.repeats} "
        f"--layer_type {args.layer_type}" + (" --random_data" if args.random_data else ""),
        "model": f"HF ResNet hidden_sizes [32,64,128,256], depths [1,1,1,1], {args.layer_type} blocks "
        f"({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params)",
        "device": args.device,
        "steps_per_run": args.epochs * -(-args.num_images // args.batch_size),
        "images_per_run": images,
        "batch_size": args.batch_size,
        "hand_images_per_second": hand,
        "trainer_images_per_second": trainer,
        "ratio_of_medians": statistics.median(trainer) / statistics.median(hand),
        "ratio_per_repeat": [t / h for t, h in zip(trainer, hand, strict=True)],
        "hand_images_per_cpu_second": hand_cpu,
        "trainer_images_per_cpu_second": trainer_cpu,
        "cpu_time_ratio_of_medians": statistics.median(trainer_cpu) / statistics.median(hand_cpu),
        "torch_threads": torch.get_num_threads(),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
    }
    if args.output is None:
        name = "trainer_throughput" + ("_short" if args.random_data else "") + ("_gpu" if args.device != "cpu" else "")
        args.output = REPO / "benchmarks" / "results" / f"{name}.json"
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
