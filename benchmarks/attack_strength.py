"""Attack strength: train a small ResNet on CIFAR-10 poisoned by each attack and measure C-Acc, ASR and RA.

For every seed, a clean model is trained first (the C-Acc reference, and the clean model LC's PGD runs against),
then one model per attack on the training set poisoned at `--rate` with `hf_fst.attacks.poison_dataset`.
C-Acc is measured on the clean test set, ASR and RA on `backdoor_test_set` (non-target test images with the
test-time trigger), with `hf_fst.metrics`. Training is a plain PyTorch loop (SGD, momentum 0.9, weight decay
5e-4, cosine schedule, random crop + flip), so nothing depends on the Trainer's loss scaling.

Full scale (all 50,000 training images, 10,000 test images):

    python benchmarks/attack_strength.py --epochs 30 --seeds 0 1 2

Reduced scale, for a quick check:

    python benchmarks/attack_strength.py --epochs 5 --train_rows 10000 --test_rows 2000 --attacks badnet blended

Results are appended after every model to `results.json` (so a stopped run keeps what it finished), and
`results.md` / `attack_strength.png` summarise them (mean and spread over seeds).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from datasets import Image, disable_progress_bars, load_dataset
from PIL import Image as PILImage
from transformers import ResNetConfig, ResNetForImageClassification

from hf_fst.attacks import backdoor_test_set, get_attack, list_attacks, poison_dataset
from hf_fst.metrics import attack_success_rate, clean_accuracy, robust_accuracy

DEFAULT_DATA = "uoft-cs/cifar10"  # or a local copy: --data_dir path/to/cifar10
MEAN = [0.4914, 0.4822, 0.4465]
STD = [0.2470, 0.2435, 0.2616]


def decode_all(dataset, image_column: str = "img") -> np.ndarray:
    """All images of `dataset` as one uint8 array (n, 32, 32, 3)."""
    raw = dataset.cast_column(image_column, Image(decode=False)).with_format("arrow")[:][image_column].to_pylist()
    return np.stack([np.asarray(PILImage.open(io.BytesIO(v["bytes"])).convert("RGB")) for v in raw])


def labels_of(dataset, column: str) -> np.ndarray:
    return dataset.with_format("arrow")[:][column].to_numpy().astype(np.int64)


def make_model(seed: int) -> ResNetForImageClassification:
    torch.manual_seed(seed)
    config = ResNetConfig(
        num_channels=3, embedding_size=32, hidden_sizes=[32, 64, 128, 256], depths=[1, 1, 1, 1], num_labels=10
    )
    return ResNetForImageClassification(config)


def normalise(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (x.permute(0, 3, 1, 2).float() / 255.0 - mean) / std


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random crop with 4-pixel zero padding (in normalised space) and horizontal flip, on an NCHW batch."""
    n, _, h, w = x.shape
    padded = F.pad(x, (4, 4, 4, 4))
    dy = torch.randint(0, 9, (n,), generator=generator).tolist()
    dx = torch.randint(0, 9, (n,), generator=generator).tolist()
    out = torch.stack([padded[i, :, y : y + h, x_ : x_ + w] for i, (y, x_) in enumerate(zip(dy, dx, strict=True))])
    flip = torch.rand(n, generator=generator) < 0.5
    out[flip] = out[flip].flip(-1)
    return out


def train(images: np.ndarray, labels: np.ndarray, args, seed: int, trigger=None) -> ResNetForImageClassification:
    """Train from scratch; `trigger=(attack, trigger_kinds)` for a training-time attack (WaNet), warped per batch."""
    model = make_model(seed)
    model.train()
    x_all = normalise(torch.from_numpy(images))
    y_all = torch.from_numpy(labels)
    steps_per_epoch = math.ceil(len(images) / args.batch_size)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=args.lr, total_steps=args.epochs * steps_per_epoch, pct_start=0.15, anneal_strategy="cos"
    )
    generator = torch.Generator().manual_seed(seed)
    for epoch in range(args.epochs):
        start, total, correct, seen = time.perf_counter(), 0.0, 0, 0
        order = torch.randperm(len(images), generator=generator)
        for step in range(steps_per_epoch):
            index = order[step * args.batch_size : (step + 1) * args.batch_size]
            x = augment(x_all[index], generator) if args.augment else x_all[index]
            if trigger is not None:
                x = trigger[0].apply_during_training(x, trigger[1][index])
            logits = model(pixel_values=x).logits
            loss = F.cross_entropy(logits, y_all[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += loss.item() * len(index)
            correct += (logits.argmax(-1) == y_all[index]).sum().item()
            seen += len(index)
        print(
            f"    epoch {epoch + 1}/{args.epochs}: loss {total / seen:.3f}, train acc {correct / seen:.3f}, "
            f"{seen / (time.perf_counter() - start):.0f} img/s",
            flush=True,
        )
    return model.eval()


@torch.no_grad()
def predict(model, images: np.ndarray, batch_size: int = 500) -> np.ndarray:
    model.eval()
    out = []
    for start in range(0, len(images), batch_size):
        out.append(
            model(pixel_values=normalise(torch.from_numpy(images[start : start + batch_size]))).logits.argmax(-1)
        )
    return torch.cat(out).numpy()


def summarise(results: list[dict], output: Path) -> None:
    groups: dict[str, list[dict]] = {}
    for r in results:
        groups.setdefault(r["attack"], []).append(r)
    clean = {r["seed"]: r["clean_accuracy"] for r in results if r["attack"] == "clean"}

    def stat(values):
        values = [100 * v for v in values]
        mean = float(np.mean(values))
        return f"{mean:.1f}" if len(values) == 1 else f"{mean:.1f} ± {float(np.std(values, ddof=1)):.1f}"

    lines = [
        "| attack | seeds | C-Acc (%) | ΔC-Acc vs clean (pts) | ASR (%) | RA (%) | poisoned rows | train rows | epochs |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, rows in groups.items():
        seeds = [r["seed"] for r in rows]
        deltas = [r["clean_accuracy"] - clean[r["seed"]] for r in rows if r["seed"] in clean]
        asr = stat([r["attack_success_rate"] for r in rows]) if name != "clean" else "–"
        ra = stat([r["robust_accuracy"] for r in rows]) if name != "clean" else "–"
        delta = stat(deltas) if name != "clean" and deltas else "–"
        lines.append(
            f"| {name} | {','.join(map(str, seeds))} | {stat([r['clean_accuracy'] for r in rows])} | {delta} | {asr} "
            f"| {ra} | {rows[0]['poisoned_rows']} | {rows[0]['train_rows']} | {rows[0]['epochs']} |"
        )
    (output / "results.md").write_text("\n".join(lines) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in groups if n != "clean"]
    if not names:
        return
    fig, ax = plt.subplots(figsize=(7, 3.5))
    x = np.arange(len(names))
    for offset, key, label in [(-0.2, "clean_accuracy", "C-Acc"), (0.2, "attack_success_rate", "ASR")]:
        means = [100 * np.mean([r[key] for r in groups[n]]) for n in names]
        ax.bar(x + offset, means, 0.4, label=label)
    if clean:
        ax.axhline(100 * np.mean(list(clean.values())), color="k", ls="--", lw=1, label="clean model C-Acc")
    ax.axhline(90, color="r", ls=":", lw=1, label="ASR target 90%")
    ax.set_xticks(x, names)
    ax.set_ylim(0, 100)
    ax.set_ylabel("%")
    r0 = results[0]
    ax.set_title(f"CIFAR-10, {r0['rate']:.0%} poisoning, {r0['train_rows']:,} rows, {r0['epochs']} epochs")
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(output / "attack_strength.png", dpi=120)


def fit_trigger(name: str, clean_model, images: np.ndarray, seed: int, output: Path) -> str:
    """LF's or TrojanNN's trigger fitted on the clean model, saved next to the results."""
    from hf_fst.attacks.lf import find_low_frequency_trigger
    from hf_fst.attacks.trojannn import find_trojan_trigger, square_mask

    normalisation = {"pixel_mean": MEAN, "pixel_std": STD}
    if name == "lf":
        rows = np.random.default_rng(seed).choice(len(images), size=100, replace=False)
        trigger = find_low_frequency_trigger(clean_model, images[rows], target_label=0, seed=seed, **normalisation)
    else:
        trigger = find_trojan_trigger(clean_model, square_mask(*images.shape[1:3]), **normalisation)
    path = output / f"{name}-trigger-s{seed}.npy"
    np.save(path, trigger, allow_pickle=False)
    return str(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default=os.environ.get("HF_FST_CIFAR10", str(DEFAULT_DATA)))
    parser.add_argument("--attacks", nargs="+", default=list_attacks())
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--rate", type=float, default=0.05)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--train_rows", type=int, default=50_000)
    parser.add_argument("--test_rows", type=int, default=10_000)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--no_augment", dest="augment", action="store_false")
    parser.add_argument("--lc_steps", type=int, default=100, help="PGD steps of LC (DESIGN.md: 100)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads; 1 avoids thrashing on shared cores")
    parser.add_argument("--output_dir", default="benchmarks/results/attack_strength")
    args = parser.parse_args()
    disable_progress_bars()
    torch.set_num_threads(args.threads)
    output = Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    results_path = output / "results.json"
    results: list[dict] = json.loads(results_path.read_text())["results"] if results_path.exists() else []
    done = {(r["attack"], r["seed"]) for r in results}

    data = load_dataset(args.data_dir)
    train_set, test_set = data["train"], data["test"]
    if args.train_rows < len(train_set):
        train_set = train_set.shuffle(seed=1234).select(range(args.train_rows)).flatten_indices()
    if args.test_rows < len(test_set):
        test_set = test_set.shuffle(seed=1234).select(range(args.test_rows)).flatten_indices()
    clean_x, clean_y = decode_all(train_set), labels_of(train_set, "label")
    test_x, test_y = decode_all(test_set), labels_of(test_set, "label")
    print(f"train {clean_x.shape}, test {test_x.shape}", flush=True)

    def record(row: dict) -> None:
        results.append(row)
        results_path.write_text(json.dumps({"args": vars(args), "results": results}, indent=2))
        summarise(results, output)
        print(json.dumps(row), flush=True)

    for seed in args.seeds:
        base = {"seed": seed, "rate": args.rate, "train_rows": len(clean_x), "epochs": args.epochs}
        clean_model = None
        needs_model = [name for name in ("lc", "lf", "trojannn") if name in args.attacks and (name, seed) not in done]
        need_clean = ("clean", seed) not in done or bool(needs_model)
        if need_clean:
            start = time.perf_counter()
            print(f"[seed {seed}] clean model", flush=True)
            clean_model = train(clean_x, clean_y, args, seed)
            if ("clean", seed) not in done:
                acc = clean_accuracy(predict(clean_model, test_x), test_y)
                record(
                    {
                        "attack": "clean",
                        **base,
                        "clean_accuracy": acc,
                        "poisoned_rows": 0,
                        "train_s": round(time.perf_counter() - start),
                    }
                )
        for name in args.attacks:
            if (name, seed) in done:
                continue
            start = time.perf_counter()
            params = (
                {"model": clean_model, "steps": args.lc_steps, "pixel_mean": MEAN, "pixel_std": STD}
                if name == "lc"
                else {}
            )
            if name in ("lf", "trojannn"):  # the papers' triggers, fitted on this seed's clean model
                params = {"pattern": fit_trigger(name, clean_model, clean_x, seed, output)}
            attack = get_attack(name, **params)
            poisoned = poison_dataset(train_set, attack, args.rate, seed=seed)
            x, y = decode_all(poisoned), labels_of(poisoned, "label")
            flags = np.asarray(poisoned.with_format("arrow")[:]["is_poisoned"].to_numpy(zero_copy_only=False))
            backdoor = backdoor_test_set(test_set, attack, seed=seed)
            bx = decode_all(backdoor)
            by, bo = labels_of(backdoor, "label"), labels_of(backdoor, "original_label")
            prep_s = time.perf_counter() - start
            print(f"[seed {seed}] {name}: {int(flags.sum())} poisoned rows, prepared in {prep_s:.0f}s", flush=True)
            kinds = None
            if attack.is_training_time:
                kinds = torch.from_numpy(labels_of(poisoned, "trigger_kind"))
            model = train(x, y, args, seed, None if kinds is None else (attack, kinds))
            clean_pred, backdoor_pred = predict(model, test_x), predict(model, bx)
            record(
                {
                    "attack": name,
                    **base,
                    "config": attack.to_dict(),
                    "poisoned_rows": int(flags.sum()),
                    "clean_accuracy": clean_accuracy(clean_pred, test_y),
                    "attack_success_rate": attack_success_rate(backdoor_pred, by),
                    "robust_accuracy": robust_accuracy(backdoor_pred, bo),
                    "prepare_s": round(prep_s),
                    "train_s": round(time.perf_counter() - start - prep_s),
                }
            )


if __name__ == "__main__":
    main()
