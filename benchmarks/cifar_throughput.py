"""Training and inference throughput of CIFAR-network sizes, to choose the benchmark model from a measurement.

Each candidate (family, depths, width multiplier) trains for a fixed number of SGD steps on random 32x32
batches (batch 128, momentum 0.9, weight decay 5e-4, as the benchmark trains) and then predicts; the figure is
images per second of the median step after warm-up, with the thread count stated. Random data is enough here:
the cost of a step does not depend on pixel values.

    OMP_NUM_THREADS=1 python benchmarks/cifar_throughput.py
    OMP_NUM_THREADS=1 python benchmarks/cifar_throughput.py --candidates preact:1,1,1,1:0.25 cifar:2,2,2,2:0.5

Writes `benchmarks/results/throughput/cifar_networks.json` (or `--output`).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from hf_fst.models import (
    CifarResNetConfig,
    CifarResNetForImageClassification,
    PreActResNetConfig,
    PreActResNetForImageClassification,
)

FAMILIES = {
    "preact": (PreActResNetConfig, PreActResNetForImageClassification),
    "cifar": (CifarResNetConfig, CifarResNetForImageClassification),
}
DEFAULT_CANDIDATES = [
    "preact:1,1,1,1:0.25", "preact:1,1,1,1:0.5", "preact:2,2,2,2:0.25", "preact:2,2,2,2:0.5",
    "cifar:1,1,1,1:0.5", "cifar:2,2,2,2:0.25",
]  # fmt: skip


def parse_candidate(text: str) -> tuple[str, list[int], float]:
    family, depths, width = text.split(":")
    if family not in FAMILIES:
        raise SystemExit(f"--candidates: family {family!r} is unknown; use one of {', '.join(FAMILIES)}")
    return family, [int(d) for d in depths.split(",")], float(width)


def measure(family: str, depths: list[int], width: float, steps: int, batch_size: int) -> dict:
    config_class, model_class = FAMILIES[family]
    torch.manual_seed(0)
    model = model_class(config_class(depths=depths, width_multiplier=width, num_labels=10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    images, labels = torch.randn(batch_size, 3, 32, 32), torch.randint(0, 10, (batch_size,))
    model.train()
    times = []
    for _ in range(steps + 2):  # two warm-up steps
        start = time.perf_counter()
        loss = F.cross_entropy(model(pixel_values=images).logits, labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    model.eval()
    eval_batch = torch.randn(500, 3, 32, 32)
    with torch.no_grad():
        model(pixel_values=eval_batch)
        start = time.perf_counter()
        model(pixel_values=eval_batch)
        eval_seconds = time.perf_counter() - start
    train_ips = batch_size / statistics.median(times[2:])
    return {
        "family": family,
        "depths": depths,
        "width_multiplier": width,
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_images_per_second": round(train_ips, 1),
        "predict_images_per_second": round(500 / eval_seconds, 1),
        "seconds_per_cifar10_epoch": round(50_000 / train_ips, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", nargs="+", default=DEFAULT_CANDIDATES, help="family:depths:width")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--output", default="benchmarks/results/throughput/cifar_networks.json")
    args = parser.parse_args()
    rows = []
    for text in args.candidates:
        row = measure(*parse_candidate(text), steps=args.steps, batch_size=args.batch_size)
        print(json.dumps(row))
        rows.append(row)
    result = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "batch_size": args.batch_size,
        "steps": args.steps,
        "candidates": rows,
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
