"""Plots of the benchmark grids' records, and the record statistics they share with the BENCHMARKS.md tables.

`benchmarks/render.py` writes the tables and calls these; every value is a mean over seeds, with the sample
standard deviation where there are two or more.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from hf_fst.tuning import TUNING_MODES  # noqa: E402

__all__ = [
    "ATTACK_LABELS", "CLAIM_MAX_ASR", "MODE_LABELS", "MODE_ORDER", "Record", "cell", "group", "plot_modes",
    "plot_retuning", "plot_sweep", "plot_tradeoff", "rate_label", "stats", "unique_by_seed",
]  # fmt: skip

MODE_LABELS = {"ft": "FT", "lp": "LP", "ft-init": "FT-init", "fe-tuning": "FE-tuning", "fst": "FST"}
ATTACK_LABELS = {
    "badnet": "BadNet",
    "blended": "Blended",
    "sig": "SIG",
    "wanet": "WaNet",
    "lc": "LC",
    "adaptive-blend": "Adaptive-Blend",
    "lf": "LF",
    "trojannn": "TrojanNN",
}
MODE_ORDER = [mode for mode in MODE_LABELS if mode in TUNING_MODES]
# The claim's ASR bound (FST leaves ASR <= 5%), drawn dashed in the ASR panels.
CLAIM_MAX_ASR = 0.05

Record = dict[str, Any]


def group(records: Iterable[Record], key: Callable[[Record], tuple]) -> dict[tuple, list[Record]]:
    groups: dict[tuple, list[Record]] = defaultdict(list)
    for record in records:
        groups[key(record)].append(record)
    return dict(groups)


def stats(rows: list[Record], metric: str) -> tuple[float, float, int]:
    values = np.array([row[metric] for row in rows], dtype=float) * 100
    spread = float(values.std(ddof=1)) if len(values) > 1 else float("nan")
    return float(values.mean()), spread, len(values)


def cell(rows: list[Record], metric: str) -> str:
    if not rows:
        return "-"
    mean, spread, _ = stats(rows, metric)
    return f"{mean:.1f}" if math.isnan(spread) else f"{mean:.1f} ± {spread:.1f}"


def unique_by_seed(rows: list[Record]) -> list[Record]:
    """One row per seed (the backdoored model's before-metrics are repeated in every mode's record)."""
    return list({row["seed"]: row for row in rows}.values())


def rate_label(rate: float) -> str:
    return f"{rate * 100:g}%"


def plot_retuning(rows: list[Record], path: Path, title: str) -> None:
    """Mean ASR after tuning and after the retuning attack, per mode (bars over all cells with both)."""
    rows = [r for r in rows if r.get("retuning_attack_success_rate") is not None]
    modes = ["backdoored"] + [m for m in MODE_ORDER if any(r["tuning_mode"] == m for r in rows)]
    after, retuned = [], []
    for mode in modes:
        if mode == "backdoored":
            picked = unique_by_seed(rows)
            after.append(stats(picked, "before_attack_success_rate")[0])
            retuned.append(stats(picked, "before_retuning_attack_success_rate")[0])
        else:
            picked = [r for r in rows if r["tuning_mode"] == mode]
            after.append(stats(picked, "attack_success_rate")[0])
            retuned.append(stats(picked, "retuning_attack_success_rate")[0])
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    x = np.arange(len(modes))
    ax.bar(x - 0.2, after, 0.4, label="after tuning (ASR)")
    ax.bar(x + 0.2, retuned, 0.4, label="after the retuning attack (P-ASR)")
    ax.set_xticks(x, [MODE_LABELS.get(m, "backdoored") for m in modes])
    ax.set_ylabel("ASR (%)")
    ax.set_ylim(0, 100)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_modes(rows: list[Record], path: Path, title: str) -> None:
    """ASR and C-Acc per tuning mode (bars), one panel pair per poisoning rate, averaged over attacks."""
    rates = sorted({r["poison_rate"] for r in rows}, reverse=True)
    attacks = sorted({r["attack"] for r in rows})
    modes = ["backdoored"] + [m for m in MODE_ORDER if any(r["tuning_mode"] == m for r in rows)]
    fig, axes = plt.subplots(2, len(rates), figsize=(5.2 * len(rates), 6.4), squeeze=False, sharey="row")
    width = 0.8 / len(attacks)
    colors = plt.get_cmap("tab10")
    for col, rate in enumerate(rates):
        for row_index, (metric, label) in enumerate(
            [("attack_success_rate", "ASR (%)"), ("clean_accuracy", "C-Acc (%)")]
        ):
            ax = axes[row_index][col]
            for a_index, attack in enumerate(attacks):
                cell_rows = [r for r in rows if r["attack"] == attack and r["poison_rate"] == rate]
                means, spreads = [], []
                for mode in modes:
                    if mode == "backdoored":
                        mode_rows, key = unique_by_seed(cell_rows), f"before_{metric}"
                    else:
                        mode_rows, key = [r for r in cell_rows if r["tuning_mode"] == mode], metric
                    if mode_rows:
                        mean, spread, _ = stats(mode_rows, key)
                    else:
                        mean, spread = float("nan"), float("nan")
                    means.append(mean)
                    spreads.append(0.0 if math.isnan(spread) else spread)
                x = np.arange(len(modes)) + (a_index - (len(attacks) - 1) / 2) * width
                ax.bar(x, means, width, yerr=spreads, capsize=2, color=colors(a_index),
                       label=ATTACK_LABELS.get(attack, attack))  # fmt: skip
            if metric == "attack_success_rate":
                ax.axhline(CLAIM_MAX_ASR * 100, color="black", linestyle="--", linewidth=0.8)
                ax.set_title(f"poisoning rate {rate_label(rate)}")
            ax.set_xticks(np.arange(len(modes)), [MODE_LABELS.get(m, "backdoored") for m in modes], rotation=20)
            ax.set_ylabel(label)
            ax.set_ylim(0, 100)
            ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=8, loc="upper right")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_tradeoff(rows: list[Record], path: Path, title: str) -> None:
    """C-Acc against ASR: one point per (attack, rate) cell and mode (mean over seeds), one marker per mode."""
    modes = [m for m in MODE_ORDER if any(r["tuning_mode"] == m for r in rows)]
    markers = dict(zip(["backdoored", *MODE_ORDER], "osv^DP", strict=False))
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    cells = group(rows, lambda r: (r["attack"], r["poison_rate"]))
    series = {"backdoored": [(stats(unique_by_seed(c), "before_attack_success_rate")[0],
                              stats(unique_by_seed(c), "before_clean_accuracy")[0]) for c in cells.values()]}  # fmt: skip
    for mode in modes:
        series[mode] = [
            (stats(m, "attack_success_rate")[0], stats(m, "clean_accuracy")[0])
            for c in cells.values()
            if (m := [r for r in c if r["tuning_mode"] == mode])
        ]
    for index, (mode, points) in enumerate(series.items()):
        xs, ys = zip(*points, strict=True) if points else ((), ())
        ax.scatter(xs, ys, marker=markers.get(mode, "o"), s=36, color=plt.get_cmap("tab10")(index),
                   label=MODE_LABELS.get(mode, mode))  # fmt: skip
    ax.axvline(CLAIM_MAX_ASR * 100, color="black", linestyle="--", linewidth=0.8)
    ax.set_xlabel("ASR (%)")
    ax.set_ylabel("C-Acc (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_sweep(groups: dict[str, list[Record]], field: str, path: Path, title: str, log_x: bool) -> None:
    """ASR and C-Acc (mean +- std over seeds) against `field`, one line per series in `groups`."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for label, rows in groups.items():
        by_value = group(rows, lambda r: (r[field],))
        xs = sorted(v[0] for v in by_value)
        for ax, metric in zip(axes, ("attack_success_rate", "clean_accuracy"), strict=True):
            means, spreads, _ = np.array([stats(by_value[(x,)], metric) for x in xs]).T
            spreads = np.nan_to_num(spreads)
            ax.errorbar(xs, means, yerr=spreads, marker="o", capsize=3, label=label)
        before = unique_by_seed(rows)
        axes[1].axhline(stats(before, "before_clean_accuracy")[0], color="gray", linestyle=":", linewidth=1)
    axes[0].axhline(CLAIM_MAX_ASR * 100, color="black", linestyle="--", linewidth=0.8)
    for ax, label in zip(axes, ("ASR (%)", "C-Acc (%)"), strict=True):
        ax.set_xlabel(field)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if log_x:
            ax.set_xscale("log")
    axes[0].legend(fontsize=8)
    axes[1].set_title("dotted: backdoored model", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
