"""Render the grid section of BENCHMARKS.md, and its plots, from the raw records of the benchmark grids.

    python benchmarks/render.py   # benchmarks/results.jsonl, results/strong/*.jsonl and results/strength/*.jsonl

Only the text between the `<!-- grid:begin -->` and `<!-- grid:end -->` markers is replaced, so the
hand-written sections around it stay. Every number in that section is a mean over the seeds found in the
records, with the sample standard deviation after the +-; nothing is typed in by hand.

Which records go where:
- the main tables: runs with the standard tuning settings of their data set (`MAIN_SETTINGS`, the paper's
  alpha and epochs), one set per data set, model and threat model (trained from scratch on poisoned data, or
  a clean base with the backdoor implanted by fine-tuning);
- the alpha sweep: fst runs of one cell that differ only in `fst_alpha`;
- the tuning-set-size sweep: runs that differ only in `num_tuning_samples`;
- the attack-strength tables (backdoors fine-tuned into a kept clean base): the backdoored models of the
  standard records and of `results/strength/` (runs made to measure the attacks, tuned with LP only), against
  the base's accuracy in its training record (`benchmarks/models/<base>/info.json`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from hf_fst.benchmark import DATASETS, read_records
from hf_fst.benchmark.plots import (
    ATTACK_LABELS,
    CLAIM_MAX_ASR,
    MODE_LABELS,
    MODE_ORDER,
    Record,
    cell,
    group,
    plot_modes,
    plot_retuning,
    plot_sweep,
    plot_tradeoff,
    rate_label,
    stats,
    unique_by_seed,
)

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- grid:begin -->", "<!-- grid:end -->"
DATASET_LABELS = {"cifar10": "CIFAR-10", "gtsrb": "GTSRB"}
# The standard tuning run of the grid: 1,000 clean images (2% of CIFAR-10's 50k), lr 0.01, crop+flip.
MAIN_SETTINGS = {"num_tuning_samples": 1000, "tuning_learning_rate": 0.01, "tuning_augment": True}
# The claim under test: at rates <= 1%, FST leaves ASR <= 5% with C-Acc within 2 points of the backdoored model.
CLAIM_MAX_RATE, CLAIM_MAX_DROP = 0.01, 0.02
# Below this mean ASR the backdoored model has (almost) no backdoor: a ~70%-accurate clean model already sends
# about 5% of triggered images to the target class by mistake, so such cells cannot test the claim.
IMPLANTED_MIN_ASR = 0.2
# An attack implants as its paper says when it reaches this ASR with C-Acc within CLAIM_MAX_DROP of a clean model.
STRENGTH_MIN_ASR = 0.9


# ------------------------------------------------------------------------------------------------ selection
def paper_alpha(record: Record) -> float:
    return DATASETS[record["dataset"]]["fst_alpha"]


def is_standard(record: Record) -> bool:
    """Standard settings for its data set: the paper's epochs and, for fst, the paper's (raw) alpha."""
    if any(record.get(key) != value for key, value in MAIN_SETTINGS.items()):
        return False
    if record["tuning_epochs"] != DATASETS[record["dataset"]]["tuning_epochs"]:
        return False
    if record["tuning_mode"] != "fst":
        return True
    alpha = record["fst_alpha"]
    return (
        isinstance(alpha, float) and not record.get("normalize_fst_alpha") and math.isclose(alpha, paper_alpha(record))
    )


def regime(record: Record) -> str:
    """How the backdoored model was made: from scratch on poisoned data, or a clean base fine-tuned on it."""
    return "base" if record.get("base_training") else "scratch"


def group_title(dataset: str, model: str, made: str) -> tuple[str, str]:
    """(heading, file-name slug) of one data set, model and threat model."""
    name = f"{DATASET_LABELS.get(dataset, dataset)}, {model}"
    if made == "base":
        return f"{name}, clean base + fine-tuned backdoor", f"{dataset}-{model}-base"
    return name, f"{dataset}-{model}"


# ------------------------------------------------------------------------------------------------ tables
def points_cell(changes: np.ndarray) -> str:
    """A change in points, signed, with the sample std when there are two or more values."""
    return f"{changes.mean():+.1f}" + (f" ± {changes.std(ddof=1):.1f}" if len(changes) > 1 else "")


def setting_line(rows: list[Record], varying: str | None = None) -> str:
    """The settings shared by `rows`; `varying` (a sweep's field) is left out."""
    first = rows[0]
    seeds = sorted({row["seed"] for row in rows})
    train = first.get("num_train_images") or "all"
    augment = "on" if first["backdoor_augment"] else "off"
    base = first.get("base_training")
    if base:
        made = (
            f"Threat model: one clean base model ({first['model']}, {train} training images, {base['epochs']} "
            f"epochs, lr {base['learning_rate']:g}, augmentation {augment}, seed {base['seed']}), each backdoor "
            f"implanted by fine-tuning it on the poisoned training set for {first['backdoor_epochs']} epochs at lr "
            f"{first['backdoor_learning_rate']:g} (augmentation {augment}). "
        )
    else:
        made = (
            f"Backdoor training: {first['model']}, {train} training images, {first['backdoor_epochs']} epochs, "
            f"lr {first['backdoor_learning_rate']:g}, augmentation {augment}. "
        )
    return (
        made
        + "Tuning: "
        + ("" if varying == "num_tuning_samples" else f"{first['num_tuning_samples']} clean images, ")
        + f"{first['tuning_epochs']} epochs, lr {first['tuning_learning_rate']:g}, "
        + f"augmentation {'on' if first['tuning_augment'] else 'off'}"
        + ("" if varying == "fst_alpha" else f", fst alpha {paper_alpha(first):g}")
        + f". Seeds: {', '.join(map(str, seeds))}."
    )


def main_table(rows: list[Record], metric: str) -> list[str]:
    """One row per (attack, rate): the backdoored model and every tuning mode, `metric` mean +- std."""
    modes = [m for m in MODE_ORDER if any(r["tuning_mode"] == m for r in rows)]
    before_metric = f"before_{metric}"
    lines = [
        "| attack | rate | seeds | backdoored | " + " | ".join(MODE_LABELS[m] for m in modes) + " |",
        "| --- | ---: | ---: | ---: | " + " | ".join("---:" for _ in modes) + " |",
    ]
    by_cell = group(rows, lambda r: (r["attack"], r["poison_rate"]))
    for (attack, rate), cell_rows in sorted(by_cell.items(), key=lambda kv: (kv[0][0], -kv[0][1])):
        by_mode = group(cell_rows, lambda r: (r["tuning_mode"],))
        seeds = len({r["seed"] for r in cell_rows})
        before = unique_by_seed(cell_rows)
        values = [cell(by_mode.get((m,), []), metric) for m in modes]
        before_cell = cell(before, before_metric) if before_metric in before[0] else "-"
        lines.append(
            f"| {ATTACK_LABELS.get(attack, attack)} | {rate_label(rate)} | {seeds} | {before_cell} | "
            + " | ".join(values)
            + " |"
        )
    return lines


def claim_table(rows: list[Record]) -> tuple[list[str], list[str]]:
    """Per cell at rate <= 1%: does FT/LP leave a high ASR, and does FST meet ASR <= 5% within 2 C-Acc points?"""
    lines = [
        "| attack | rate | backdoored ASR | FT ASR | LP ASR | FST ASR | FST C-Acc change (points) | FST ASR <= 5% "
        "| C-Acc within 2 | verdict |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | :---: | :---: | --- |",
    ]
    failures = []
    low = [r for r in rows if r["poison_rate"] <= CLAIM_MAX_RATE + 1e-12]
    cells = sorted(group(low, lambda r: (r["attack"], r["poison_rate"])).items(), key=lambda kv: (kv[0][0], -kv[0][1]))
    for (attack, rate), cell_rows in cells:
        by_mode = group(cell_rows, lambda r: (r["tuning_mode"],))
        fst = by_mode.get(("fst",), [])
        if not fst:
            continue
        asr, _, _ = stats(fst, "attack_success_rate")
        drops = np.array([(r["clean_accuracy"] - r["before_clean_accuracy"]) * 100 for r in fst])
        drop = float(drops.mean())
        asr_ok, acc_ok = asr <= CLAIM_MAX_ASR * 100, drop >= -CLAIM_MAX_DROP * 100
        before_asr = stats(unique_by_seed(cell_rows), "before_attack_success_rate")[0]
        if before_asr < IMPLANTED_MIN_ASR * 100:
            verdict = "no backdoor to remove"
        else:
            verdict = "holds" if asr_ok and acc_ok else "does not hold"
            if verdict != "holds":
                failures.append(f"{ATTACK_LABELS.get(attack, attack)} {rate_label(rate)}")
        lines.append(
            f"| {ATTACK_LABELS.get(attack, attack)} | {rate_label(rate)} | "
            f"{cell(unique_by_seed(cell_rows), 'before_attack_success_rate')} | "
            f"{cell(by_mode.get(('ft',), []), 'attack_success_rate')} | "
            f"{cell(by_mode.get(('lp',), []), 'attack_success_rate')} | {cell(fst, 'attack_success_rate')} | "
            f"{points_cell(drops)} | "
            f"{'yes' if asr_ok else 'no'} | {'yes' if acc_ok else 'no'} | {verdict} |"
        )
    return lines, failures


def retuning_table(rows: list[Record]) -> list[str]:
    """ASR after tuning -> after the retuning attack (P-ASR), per cell and mode; the backdoored model first."""
    rows = [r for r in rows if r.get("retuning_attack_success_rate") is not None]
    modes = [m for m in MODE_ORDER if any(r["tuning_mode"] == m for r in rows)]
    lines = [
        "| attack | rate | seeds | backdoored | " + " | ".join(MODE_LABELS[m] for m in modes) + " |",
        "| --- | ---: | ---: | ---: | " + " | ".join("---:" for _ in modes) + " |",
    ]
    cells = sorted(
        group(rows, lambda r: (r["attack"], r["poison_rate"])).items(), key=lambda kv: (kv[0][0], -kv[0][1])
    )
    for (attack, rate), cell_rows in cells:
        before = unique_by_seed(cell_rows)
        values = [
            f"{cell(before, 'before_attack_success_rate')} → {cell(before, 'before_retuning_attack_success_rate')}"
        ]
        for mode in modes:
            mode_rows = [r for r in cell_rows if r["tuning_mode"] == mode]
            values.append(
                f"{cell(mode_rows, 'attack_success_rate')} → {cell(mode_rows, 'retuning_attack_success_rate')}"
                if mode_rows else "-"
            )  # fmt: skip
        seeds = len({r["seed"] for r in cell_rows})
        lines.append(
            f"| {ATTACK_LABELS.get(attack, attack)} | {rate_label(rate)} | {seeds} | " + " | ".join(values) + " |"
        )
    return lines


def auto_table(records: list[Record], standard: list[Record]) -> list[str]:
    """`fst_alpha=auto` beside paper FST, per cell: chosen strength, C-Acc change, ASR (and P-ASR when measured)."""
    lines = [
        "| attack | rate | seeds | budget (points) | chosen alpha x \\|\\|W0\\|\\|^2 | auto: C-Acc change | auto: ASR "
        "| auto: P-ASR | paper FST: C-Acc change | paper FST: ASR |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    cells = sorted(
        group(records, lambda r: (r["attack"], r["poison_rate"])).items(), key=lambda kv: (kv[0][0], -kv[0][1])
    )
    for (attack, rate), rows in cells:
        paper = [r for r in standard if r["tuning_mode"] == "fst" and (r["attack"], r["poison_rate"]) == (attack, rate)
                 and r["model"] == rows[0]["model"] and regime(r) == regime(rows[0])]  # fmt: skip

        def change(picked: list[Record]) -> str:
            if not picked:
                return "-"
            return points_cell(np.array([(r["clean_accuracy"] - r["before_clean_accuracy"]) * 100 for r in picked]))

        chosen = np.array([r["fst_alpha_normalized"] for r in rows], dtype=float)
        p_asr = (
            cell(rows, "retuning_attack_success_rate")
            if all("retuning_attack_success_rate" in r for r in rows)
            else "-"
        )
        lines.append(
            f"| {ATTACK_LABELS.get(attack, attack)} | {rate_label(rate)} | {len({r['seed'] for r in rows})} | "
            f"{100 * rows[0]['max_accuracy_drop']:g} | {chosen.mean():.2f} | {change(rows)} | "
            f"{cell(rows, 'attack_success_rate')} | {p_asr} | {change(paper)} | {cell(paper, 'attack_success_rate')} |"
        )
    return lines


def sweep_table(groups: dict[str, list[Record]], field: str, field_label: str) -> list[str]:
    normalised = field == "fst_alpha" and any("fst_alpha_normalized" in r for rows in groups.values() for r in rows)
    extra = " alpha x \\|\\|W0\\|\\|^2 |" if normalised else ""
    lines = [
        f"| series | {field_label} |{extra} seeds | C-Acc (%) | ASR (%) | RA (%) |",
        "| --- | ---: |" + (" ---: |" if normalised else "") + " ---: | ---: | ---: | ---: |",
    ]
    for label, rows in groups.items():
        for (value,), value_rows in sorted(group(rows, lambda r: (r[field],)).items()):
            strength = ""
            if normalised:
                values = [r["fst_alpha_normalized"] for r in value_rows if r.get("fst_alpha_normalized") is not None]
                strength = f" {np.mean(values):.2f} |" if values else " - |"
            lines.append(
                f"| {label} | {value:g} |{strength} {len(value_rows)} | {cell(value_rows, 'clean_accuracy')} | "
                f"{cell(value_rows, 'attack_success_rate')} | {cell(value_rows, 'robust_accuracy')} |"
            )
    return lines


# ------------------------------------------------------------------------------------------------ render
def sweep_series(records: list[Record], varying: str) -> dict[tuple, dict[str, list[Record]]]:
    """Sweeps over `varying`: per (data set, model, attack, rate) and mode, runs that differ only in `varying`."""
    fixed = [k for k in ("tuning_epochs", "tuning_learning_rate", "tuning_augment", "backdoor_epochs",
                         "num_train_images", "fst_alpha", "num_tuning_samples", "base_training", "backdoor_augment",
                         "normalize_fst_alpha") if k != varying]  # fmt: skip
    found: dict[tuple, dict[str, list[Record]]] = {}
    numeric = [r for r in records if isinstance(r.get(varying), (int, float))]
    cells = group(
        numeric, lambda r: (r["dataset"], r["model"], regime(r), r["attack"], r["poison_rate"], r["tuning_mode"])
    )
    for (dataset, model, made, attack, rate, mode), rows in cells.items():
        for setting_rows in group(rows, lambda r: tuple(json.dumps(r.get(k)) for k in fixed)).values():
            if len({r[varying] for r in setting_rows}) >= 4:
                label = MODE_LABELS[mode] if varying != "fst_alpha" else "FST"
                found.setdefault((dataset, model, made, attack, rate), {})[label] = setting_rows
    return found


def clean_reference(dataset: str, model: str, base: dict[str, Any], models_dirs: Iterable[Path]) -> float | None:
    """C-Acc of the clean base a backdoor was fine-tuned from: its training record (`info.json`) in a models folder."""
    pattern = f"{dataset}-{model}-clean-s{base['seed']}-base-e{base['epochs']}-lr{base['learning_rate']:g}-*"
    for folder in models_dirs:
        for found in sorted(Path(folder).glob(pattern)):
            if (found / "info.json").is_file():
                return json.loads((found / "info.json").read_text())["clean_accuracy"]
    return None


def strength_table(rows: list[Record], clean: float) -> list[str]:
    """The backdoored models themselves, per attack and rate: C-Acc against the clean base, ASR, RA, implanted?"""
    lines = [
        "| attack | rate | seeds | C-Acc (%) | vs clean base (points) | ASR (%) | RA (%) | implanted? |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    cells = group(rows, lambda r: (r["attack"], r["poison_rate"]))
    for (attack, rate), cell_rows in sorted(cells.items(), key=lambda kv: (kv[0][0], -kv[0][1])):
        models = unique_by_seed(cell_rows)
        changes = np.array([(r["before_clean_accuracy"] - clean) * 100 for r in models])
        asr = stats(models, "before_attack_success_rate")[0]
        misses = []
        if asr < STRENGTH_MIN_ASR * 100:
            misses.append(f"ASR under {STRENGTH_MIN_ASR:.0%}")
        if changes.mean() < -CLAIM_MAX_DROP * 100 - 1e-9:
            misses.append(f"C-Acc cost over {CLAIM_MAX_DROP * 100:g} points")
        if asr < IMPLANTED_MIN_ASR * 100:
            verdict = "no backdoor"
        else:
            verdict = f"no ({', '.join(misses)})" if misses else "yes"
        lines.append(
            f"| {ATTACK_LABELS.get(attack, attack)} | {rate_label(rate)} | {len(models)} | "
            f"{cell(models, 'before_clean_accuracy')} | {points_cell(changes)} | "
            f"{cell(models, 'before_attack_success_rate')} | {cell(models, 'before_robust_accuracy')} | {verdict} |"
        )
    return lines


def render(
    records: list[Record],
    plot_dir: Path,
    link_dir: str = "benchmarks/plots",
    strength_records: Iterable[Record] = (),
    models_dirs: Iterable[Path] = (),
) -> str:
    """The grid section of BENCHMARKS.md; plots go to `plot_dir` and are linked as `link_dir/<name>.png`.

    `strength_records` (runs made only to measure the backdoored models, any tuning mode) join the standard
    records in the attack-strength tables; `models_dirs` hold the clean bases' training records.
    """
    plot_dir.mkdir(parents=True, exist_ok=True)
    rel = link_dir
    out = [
        BEGIN,
        "<!-- Rendered by `python benchmarks/render.py` from the grids' records; edits here are overwritten. -->",
        "",
        f"{len(records)} tuning runs in `benchmarks/results.jsonl` and `benchmarks/results/strong/`. Every figure is "
        "mean ± sample standard "
        "deviation over the seeds listed, in percent; C-Acc on the clean test split, ASR and RA on the "
        "test images of other classes with the trigger applied.",
        "",
    ]
    standard = [r for r in records if is_standard(r)]
    all_failures: list[str] = []
    for (dataset, model, made), rows in sorted(
        group(standard, lambda r: (r["dataset"], r["model"], regime(r))).items()
    ):
        name, slug = group_title(dataset, model, made)
        out += [f"### {name}: every tuning mode", "", setting_line(rows), ""]
        out += ["ASR (%), lower is better:", "", *main_table(rows, "attack_success_rate"), ""]
        out += ["C-Acc (%):", "", *main_table(rows, "clean_accuracy"), ""]
        out += ["RA (%), higher is better:", "", *main_table(rows, "robust_accuracy"), ""]
        plot_modes(rows, plot_dir / f"modes-{slug}.png", f"{name}: ASR and C-Acc per tuning mode")
        out += [f"![ASR and C-Acc per mode, {name}]({rel}/modes-{slug}.png)", ""]
        plot_tradeoff(rows, plot_dir / f"tradeoff-{slug}.png", f"{name}: C-Acc against ASR, one point per cell")
        out += [f"![C-Acc against ASR per mode, {name}]({rel}/tradeoff-{slug}.png)", ""]
        if any(r.get("retuning_attack_success_rate") is not None for r in rows):
            out += [f"Retuning attack, {name}: ASR after tuning → after the retuning attack (P-ASR), in percent:", "",
                    *retuning_table(rows), ""]  # fmt: skip
            plot_retuning(rows, plot_dir / f"retuning-{slug}.png", f"{name}: ASR before and after the retuning attack")
            out += [f"![ASR and P-ASR per mode, {name}]({rel}/retuning-{slug}.png)", ""]
        claim, failures = claim_table(rows)
        if len(claim) > 2:
            if failures:
                all_failures.append(f"{name}: {', '.join(failures)}")
            out += [
                f"The claim at rates of 1% and below, {name} (FST C-Acc change is after minus before, per seed):",
                "",
                *claim,
                "",
            ]
    autos = [r for r in records if r["tuning_mode"] == "fst" and r.get("fst_alpha") == "auto"]
    for (dataset, model, made), rows in sorted(group(autos, lambda r: (r["dataset"], r["model"], regime(r))).items()):
        name, _ = group_title(dataset, model, made)
        out += [f"### {name}: FST within an accuracy budget (`fst_alpha=auto`) beside paper FST", "",
                "C-Acc change in points (after minus before, on the test split); ASR in percent. The budget is checked "
                "on held-out clean tuning images, never on the test split.", "", *auto_table(rows, standard), ""]  # fmt: skip
    backdoored = [r for r in [*standard, *strength_records] if r.get("base_training")]
    for (dataset, model, made), rows in sorted(
        group(backdoored, lambda r: (r["dataset"], r["model"], regime(r))).items()
    ):
        base = rows[0]["base_training"]
        clean = clean_reference(dataset, model, base, models_dirs)
        if clean is None:
            continue
        name, _ = group_title(dataset, model, made)
        out += [f"### {name}: attack strength", "",
                f"The backdoored models before tuning, against their clean base ({100 * clean:.2f}% C-Acc). Implanted: "
                f"ASR >= {STRENGTH_MIN_ASR:.0%} with C-Acc within {CLAIM_MAX_DROP * 100:g} points of the clean base; "
                f"'no backdoor' below {IMPLANTED_MIN_ASR:.0%} ASR.", "", *strength_table(rows, clean), ""]  # fmt: skip
    if all_failures:
        out += ["Cells where the claim (FST ASR <= 5% and C-Acc within 2 points) does not hold at the paper's "
                "settings: " + "; ".join(all_failures) + ".", ""]  # fmt: skip

    for varying, title, label, log_x in (
        ("fst_alpha", "alpha sweep", "fst_alpha", True),
        ("num_tuning_samples", "tuning-set-size sweep", "tuning images", True),
    ):
        for (dataset, model, made, attack, rate), series in sorted(sweep_series(records, varying).items()):
            group_name, group_slug = group_title(dataset, model, made)
            name = f"{group_name}, {ATTACK_LABELS.get(attack, attack)} {rate_label(rate)}"
            slug = f"{varying}-{group_slug}-{attack}-{rate:g}"
            out += [f"### {title[0].upper() + title[1:]}: {name}", ""]
            out += [setting_line([r for rows in series.values() for r in rows], varying), ""]
            plot_sweep(series, varying, plot_dir / f"{slug}.png", f"{title}: {name}", log_x)
            out += [f"![{title}, {name}]({rel}/{slug}.png)", "", *sweep_table(series, varying, label), ""]
    out.append(END)
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--results_file",
        nargs="+",
        default=[str(ROOT / "benchmarks" / "results.jsonl"),
                 *map(str, sorted((ROOT / "benchmarks" / "results" / "strong").glob("*.jsonl")))],
    )  # fmt: skip
    parser.add_argument(
        "--strength_file",
        nargs="*",
        default=[str(path) for path in sorted((ROOT / "benchmarks" / "results" / "strength").glob("*.jsonl"))],
        help="Records of runs that measure the backdoored models only (the attack-strength tables).",
    )
    parser.add_argument(
        "--models_dir",
        nargs="*",
        default=[str(ROOT / "benchmarks" / "models")],
        help="Folders holding the clean base models and their training records (info.json).",
    )
    parser.add_argument("--markdown", default=str(ROOT / "BENCHMARKS.md"))
    parser.add_argument("--plot_dir", default=str(ROOT / "benchmarks" / "plots"))
    args = parser.parse_args()
    records = [record for path in args.results_file for record in read_records(path)]
    if not records:
        raise SystemExit(f"error: --results_file {args.results_file} has no records; run recipes/benchmark.py first")
    markdown = Path(args.markdown)
    plot_dir = Path(args.plot_dir).resolve()
    strength = [record for path in args.strength_file for record in read_records(path)]
    link = os.path.relpath(plot_dir, markdown.resolve().parent)
    section = render(records, plot_dir, link, strength, [Path(folder) for folder in args.models_dir])
    text = markdown.read_text()
    if BEGIN in text and END in text:
        text = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: section, text, flags=re.S)
    else:
        text = text.rstrip("\n") + "\n\n## Backdoor removal grid\n\n" + section + "\n"
    markdown.write_text(text)
    print(f"rendered {len(records)} records into {markdown}")


if __name__ == "__main__":
    main()
