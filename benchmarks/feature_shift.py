"""The feature shift FST causes: a 2-D t-SNE of penultimate features of clean and triggered test images,
for the backdoored model, after FT and after FST.

    OMP_NUM_THREADS=1 python benchmarks/feature_shift.py --attack badnet --poison_rate 0.01 --seed 0 \
        --backdoor_epochs 8

It reuses the grid's cached backdoored model (the same settings as recipes/benchmark.py, so the model is
trained only if that cell was never run) and writes `benchmarks/plots/feature-shift-<cell>.png` and
`benchmarks/results/feature_shift/<cell>.json`.

Besides the picture, numbers per model, computed in the full feature space (not the projection):
- `shift_clean`, `shift_triggered`: mean cosine distance (1 - cosine similarity) between this model's
  features of an image and the backdoored model's features of the same image: how far tuning moved the
  features, on clean and on triggered images.
- `poisoned_nearest_target`: share of triggered images whose nearest clean class centroid is the target.
- `triggered_vs_clean_separability`: 5-fold cross-validated accuracy of a logistic regression that tells
  triggered from clean images by their features (0.5 = indistinguishable).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.manifold import TSNE  # noqa: E402
from sklearn.model_selection import cross_val_score  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from transformers import HfArgumentParser  # noqa: E402

from hf_fst.benchmark import GridConfig, GridRunner  # noqa: E402
from hf_fst.benchmark.tensors import normalize  # noqa: E402
from hf_fst.heads import find_linear_head  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class FeatureShiftArguments:
    attack: str = field(default="badnet", metadata={"help": "Attack of the grid cell."})
    poison_rate: float = field(default=0.01, metadata={"help": "Poisoning rate of the grid cell."})
    seed: int = field(default=0, metadata={"help": "Seed of the grid cell (backdoored model and tuning set)."})
    num_points: int = field(default=600, metadata={"help": "Clean and triggered test images each in the plot."})
    modes: list[str] = field(default_factory=lambda: ["ft", "fst"], metadata={"help": "Tuning modes to show."})


@torch.no_grad()
def penultimate_features(model: torch.nn.Module, images: torch.Tensor, batch_size: int = 500) -> np.ndarray:
    """The input of the classification head (what FST shifts), for uint8 images."""
    _, head = find_linear_head(model)
    captured: list[torch.Tensor] = []
    handle = head.register_forward_hook(lambda _module, args, _output: captured.append(args[0].flatten(1)))
    model.eval()
    try:
        for start in range(0, len(images), batch_size):
            model(pixel_values=normalize(images[start : start + batch_size]))
    finally:
        handle.remove()
    return torch.cat(captured).numpy()


def shift_numbers(clean: np.ndarray, clean_labels: np.ndarray, poisoned: np.ndarray, target: int) -> dict:
    """Where triggered features sit relative to the clean class centroids, and how separable they are."""
    classes = np.unique(clean_labels)
    centroids = np.stack([clean[clean_labels == c].mean(0) for c in classes])
    distances = ((poisoned[:, None, :] - centroids[None]) ** 2).sum(-1)
    nearest = classes[distances.argmin(1)]
    features = StandardScaler().fit_transform(np.concatenate([clean, poisoned]))
    is_triggered = np.r_[np.zeros(len(clean)), np.ones(len(poisoned))]
    probe = LogisticRegression(max_iter=2000)
    separability = cross_val_score(probe, features, is_triggered, cv=5).mean()
    return {"poisoned_nearest_target": float(np.mean(nearest == target)),
            "triggered_vs_clean_separability": float(separability)}  # fmt: skip


def cosine_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over rows of 1 - cos(a_i, b_i)."""
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)
    return float(np.mean(1 - cos))


def main(argv: list[str] | None = None) -> None:
    shift_args, grid = HfArgumentParser((FeatureShiftArguments, GridConfig)).parse_args_into_dataclasses(args=argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    runner = GridRunner(grid)
    dataset = grid.datasets[0]
    epochs, alpha = runner.settings(dataset)
    model, evaluation, info = runner.backdoored_model(
        dataset, shift_args.attack, shift_args.poison_rate, shift_args.seed
    )
    target = int(info["attack"]["target_label"])
    count = grid.num_tuning_samples or int(round(grid.tuning_ratio * len(runner.load(dataset)["train"])))

    rng = np.random.default_rng(0)
    n = shift_args.num_points
    clean_index = rng.permutation(len(evaluation.clean_labels))[:n]
    poisoned_index = rng.permutation(len(evaluation.backdoor_labels))[:n]
    clean_images, clean_labels = evaluation.clean_images[clean_index], evaluation.clean_labels[clean_index]
    poisoned_images = evaluation.backdoor_images[poisoned_index]

    models = {"backdoored": model}
    for mode in shift_args.modes:
        models[mode] = runner.tune(model, dataset, mode, shift_args.seed, count, alpha).model

    labels = {"backdoored": "backdoored", "ft": "after FT", "lp": "after LP", "ft-init": "after FT-init",
              "fe-tuning": "after FE-tuning", "fst": f"after FST (alpha {alpha:g})"}  # fmt: skip
    fig, axes = plt.subplots(1, len(models), figsize=(4.6 * len(models), 4.4))
    summary = {}
    reference = None
    for ax, (name, current) in zip(axes, models.items(), strict=True):
        clean = penultimate_features(current, clean_images)
        poisoned = penultimate_features(current, poisoned_images)
        reference = reference or (clean, poisoned)
        metrics = evaluation.evaluate(current)
        summary[name] = {
            **shift_numbers(clean, clean_labels, poisoned, target),
            "shift_clean": cosine_distance(clean, reference[0]),
            "shift_triggered": cosine_distance(poisoned, reference[1]),
            **metrics,
        }
        points = TSNE(n_components=2, init="pca", random_state=0, perplexity=30).fit_transform(
            np.concatenate([clean, poisoned])
        )
        other = clean_labels != target
        ax.scatter(*points[:n][other].T, s=4, c="lightgray", label="clean, other classes")
        ax.scatter(*points[:n][~other].T, s=4, c="tab:blue", label=f"clean, target class {target}")
        ax.scatter(*points[n:].T, s=4, c="tab:red", label="triggered (other classes)")
        s = summary[name]
        ax.set_title(
            f"{labels[name]}\nASR {metrics['attack_success_rate'] * 100:.1f}%  C-Acc "
            f"{metrics['clean_accuracy'] * 100:.1f}%\nfeature shift vs backdoored: clean {s['shift_clean']:.2f}, "
            f"triggered {s['shift_triggered']:.2f}",
            fontsize=9,
        )
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0].legend(fontsize=7, loc="lower left", markerscale=3)
    cell = f"{dataset}-{grid.model}-{shift_args.attack}-{shift_args.poison_rate:g}-s{shift_args.seed}"
    fig.suptitle(f"Penultimate features (t-SNE), {cell}, {n} clean and {n} triggered test images")
    fig.tight_layout()
    plot = ROOT / "benchmarks" / "plots" / f"feature-shift-{cell}.png"
    plot.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(plot, dpi=110)
    out = ROOT / "benchmarks" / "results" / "feature_shift" / f"{cell}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"cell": cell, "fst_alpha": alpha, "tuning_epochs": epochs, "models": summary},
                              indent=2, sort_keys=True) + "\n")  # fmt: skip
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
