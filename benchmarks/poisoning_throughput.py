"""Poisoning throughput: `hf_fst.attacks.poison_dataset` against a naive per-image PIL loop, same run, same data.

The naive loop is what one writes without the fast path: decode every image to PIL, put the trigger on the
selected ones (with the same vectorised trigger code, one image at a time), and build a new dataset from the PIL
images (which re-encodes every row). `poison_dataset` casts the image column to `Image(decode=False)` and decodes
and re-encodes only the selected rows. Both produce the same pixels; the script checks that on a sample.

    python benchmarks/poisoning_throughput.py --output_dir benchmarks/results/throughput

Writes `throughput.json`, `throughput.md` and `throughput.png` to `--output_dir`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset, Features, disable_progress_bars, load_dataset
from PIL import Image

from hf_fst.attacks import get_attack, list_attacks, plan_poisoning, poison_dataset

DEFAULT_DATA = "uoft-cs/cifar10"  # or a local copy: --data_dir path/to/cifar10
KINDS = {1: "poison", 2: "cover"}


def naive_poison(dataset, attack, rate: float, seed: int) -> Dataset:
    """Per-image loop: decode each row to PIL, trigger the selected ones, rebuild the dataset from PIL images."""
    labels = np.asarray(dataset["label"])
    plan = plan_poisoning(labels, attack, rate, seed)
    where = {int(i): k for k, i in enumerate(plan.indices)}
    prepared = {}
    if attack.name == "lc":  # PGD in batches up front, as poison_dataset does: the loop below stays per image
        rows = plan.poison_indices
        arrays = np.stack([np.asarray(dataset[int(i)]["img"].convert("RGB")) for i in rows])
        prepared = dict(zip(rows.tolist(), attack.prepare(arrays, labels[rows]), strict=True))
    images, new_labels = [], labels.copy()
    for i in range(len(dataset)):
        image = dataset[i]["img"]
        if i in where:
            k = where[i]
            array = np.asarray(image.convert("RGB"))[None]
            if i in prepared:
                array = prepared[i][None]
            array = attack.apply(array, KINDS[int(plan.kinds[k])], plan.seeds[k : k + 1])
            image = Image.fromarray(array[0])
            new_labels[i] = plan.labels[k]
        images.append(image)
    features = Features({"img": dataset.features["img"], "label": dataset.features["label"]})
    return Dataset.from_dict({"img": images, "label": new_labels.tolist()}, features=features)


def small_resnet():
    from transformers import ResNetConfig, ResNetForImageClassification

    torch.manual_seed(0)
    config = ResNetConfig(
        num_channels=3, embedding_size=32, hidden_sizes=[32, 64, 128, 256], depths=[1, 1, 1, 1], num_labels=10
    )
    return ResNetForImageClassification(config).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default=os.environ.get("HF_FST_CIFAR10", str(DEFAULT_DATA)))
    parser.add_argument("--num_rows", type=int, default=50_000, help="training rows to poison (50,000 = all)")
    parser.add_argument("--attacks", nargs="+", default=list_attacks())
    parser.add_argument("--rate", type=float, default=0.05)
    parser.add_argument("--lc_steps", type=int, default=10, help="PGD steps for LC (random small ResNet)")
    parser.add_argument("--naive_rows", type=int, default=None, help="rows for the naive loop (default: all)")
    parser.add_argument("--repeats", type=int, default=3, help="poison_dataset timings per attack (median kept)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 avoids thrashing on shared cores)")
    parser.add_argument("--output_dir", default="benchmarks/results/throughput")
    args = parser.parse_args()
    disable_progress_bars()
    torch.set_num_threads(args.threads)
    output = Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)

    results = []
    with tempfile.TemporaryDirectory() as cache_dir:
        full = load_dataset(args.data_dir, split="train", cache_dir=cache_dir)
        dataset = full.select(range(args.num_rows)) if args.num_rows < len(full) else full
        naive_rows = args.naive_rows or len(dataset)
        for name in args.attacks:
            attack = get_attack(name, model=small_resnet(), steps=args.lc_steps) if name == "lc" else get_attack(name)
            if name == "lc":  # warm the model up so neither timing pays for the first-call setup
                attack.prepare(np.zeros((4, 32, 32, 3), np.uint8), np.zeros(4, np.int64))
            poison_dataset(dataset.select(range(200)), attack, 0.05, load_from_cache_file=False)  # warm-up
            fast_times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                fast = poison_dataset(dataset, attack, args.rate, seed=0, load_from_cache_file=False)
                fast_times.append(time.perf_counter() - start)
            fast_s = float(np.median(fast_times))
            subset = dataset.select(range(naive_rows)) if naive_rows < len(dataset) else dataset
            start = time.perf_counter()
            naive = naive_poison(subset, attack, args.rate, seed=0)
            naive_s = (time.perf_counter() - start) * len(dataset) / naive_rows
            # Same pixels on a sample of the rows the naive run covered (needs the same plan, i.e. the same rows).
            if naive_rows == len(dataset):
                flags = np.flatnonzero(fast["is_poisoned"])[:50]
                for i in map(int, flags):
                    assert np.array_equal(np.asarray(fast[i]["img"]), np.asarray(naive[i]["img"])), (name, i)
            row = {
                "attack": name,
                "rows": len(dataset),
                "rate": args.rate,
                "poisoned_rows": int(sum(fast["is_poisoned"])),
                "fast_s": round(fast_s, 3),
                "fast_s_all": [round(t, 3) for t in fast_times],
                "fast_img_per_s": round(len(dataset) / fast_s),
                "naive_s": round(naive_s, 3),
                "naive_rows_timed": naive_rows,
                "naive_img_per_s": round(len(dataset) / naive_s),
                "speedup": round(naive_s / fast_s, 1),
            }
            if name == "lc":
                row["note"] = f"includes PGD ({args.lc_steps} steps, random small ResNet) on the poisoned rows"
            print(json.dumps(row), flush=True)
            results.append(row)
            del fast, naive

    meta = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "args": vars(args),
    }
    (output / "throughput.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    lines = [
        "| attack | rows | poisoned | poison_dataset (s), median [min-max] | img/s | naive loop (s) | img/s | speedup |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['attack']} | {r['rows']:,} | {r['poisoned_rows']:,} | {r['fast_s']:.2f} "
            f"[{min(r['fast_s_all']):.2f}-{max(r['fast_s_all']):.2f}] | {r['fast_img_per_s']:,} "
            f"| {r['naive_s']:.2f} | {r['naive_img_per_s']:,} | {r['speedup']:.1f}x |"
        )
    (output / "throughput.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    x = np.arange(len(results))
    ax.bar(x - 0.2, [r["fast_img_per_s"] for r in results], 0.4, label="poison_dataset")
    ax.bar(x + 0.2, [r["naive_img_per_s"] for r in results], 0.4, label="naive per-image PIL loop")
    ax.set_xticks(x, [r["attack"] for r in results])
    ax.set_yscale("log")
    ax.set_ylabel("images / s (log)")
    ax.set_title(f"Poisoning {results[0]['rows']:,} CIFAR-10 images at {args.rate:.0%}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(output / "throughput.png", dpi=120)


if __name__ == "__main__":
    main()
