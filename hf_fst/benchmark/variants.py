"""Tables of the study of FST variants (`benchmarks/fst_variants.py`): which method to compare with, per cell.

Records are the study's (one per variant, strength and seed) beside the strong grid's; the paper's FST and FT come
from the grid on the same backdoored model, or from the study itself where it tuned them on a rebuilt one.
"""

from __future__ import annotations

import math

import numpy as np

from hf_fst.benchmark.plots import cell, stats
from hf_fst.benchmark.sources import DATASETS

__all__ = ["LABELS", "PAPER", "affordable_table", "budget_table", "gain_over_fst", "is_paper_fst", "points", "retuned"]

PAPER = "fst (paper alpha)"  # the strong grid's fst rows: the data set's alpha from the paper, raw
LABELS = {PAPER: "paper", "ft": "-"}  # the methods compared with, and their strength labels
Cells = dict[tuple[str, str, float], dict[tuple[str, str], list[dict]]]


def is_paper_fst(record: dict) -> bool:
    """A grid record of the paper's FST: the data set's own alpha, raw (not a scale-free strength, not `auto`)."""
    alpha = record.get("fst_alpha")
    paper = isinstance(alpha, float) and math.isclose(alpha, DATASETS[record["dataset"]]["fst_alpha"])
    return record.get("tuning_mode") == "fst" and paper and not record.get("normalize_fst_alpha")


def points(records: list[dict], strong: list[dict]) -> dict[tuple[str, str, float], dict[tuple[str, str], list[dict]]]:
    """Records by cell (data set, attack, rate) and method (variant, strength label); the paper's FST and FT come
    from the strong grid, on the seeds the variants ran, unless they were tuned beside the variants (on a rebuilt
    model the grid's records are not of)."""
    cells: dict[tuple[str, str, float], dict[tuple[str, str], list[dict]]] = {}
    seeds = {(r["dataset"], r["attack"], r["poison_rate"], r["seed"]) for r in records}
    tuned_here = {(r["dataset"], r["attack"], r["poison_rate"], r["seed"]) for r in records if r["variant"] in LABELS}
    for r in records:
        label = LABELS.get(r["variant"]) or f"{r['strength']:g}"
        cells.setdefault((r["dataset"], r["attack"], r["poison_rate"]), {}).setdefault(
            (r["variant"], label), []
        ).append(r)
    for r in strong:
        where = (r["dataset"], r["attack"], r["poison_rate"], r["seed"])
        if where not in seeds or where in tuned_here:
            continue
        if is_paper_fst(r) or r["tuning_mode"] == "ft":
            method = PAPER if r["tuning_mode"] == "fst" else "ft"
            cells[where[:3]].setdefault((method, LABELS[method]), []).append(r)
    return cells


def budget_table(auto: list[dict], strong: list[dict]) -> list[str]:
    """Markdown rows: each variant run with `fst_alpha="auto"` beside FST's own search on the same backdoored models
    (same before-metrics) and the same budget, over the seeds both ran. FST's search is the one run beside the
    variants (`--variants fst`) where there is one, else the strong grid's `auto` record."""

    def same_model(a: dict, b: dict) -> bool:
        return all(a.get(k) == b.get(k) for k in ("dataset", "attack", "poison_rate", "seed", "before_clean_accuracy",
                                                   "before_attack_success_rate", "max_accuracy_drop"))  # fmt: skip

    here = [r for r in auto if r["variant"] == "fst"]
    grid = [r for r in strong if r.get("tuning_mode") == "fst" and r.get("fst_alpha_search")]
    references = here + [r for r in grid if not any(same_model(r, h) for h in here)]
    lines = ["| data set, attack, rate | budget (points) | seeds | method | chosen s | C-Acc change (points) | ASR (%) "
             "| budget met on held-out images |", "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: |"]  # fmt: skip
    groups: dict[tuple, list[dict]] = {}
    for r in auto:
        if r["variant"] != "fst":
            key = (r["dataset"], r["attack"], r["poison_rate"], r["variant"], r["max_accuracy_drop"])
            groups.setdefault(key, []).append(r)
    for (dataset, attack, rate, variant, drop), rows in sorted(groups.items()):
        pairs = [(row, ref) for row in rows for ref in references if same_model(row, ref)]
        for method, chosen in (
            ("fst (auto)", [ref for _, ref in pairs]),
            (f"{variant} (auto)", [r for r, _ in pairs]),
        ):
            if not chosen:
                continue
            strengths = ", ".join(f"{r['fst_alpha_normalized']:.3g}" for r in sorted(chosen, key=lambda r: r["seed"]))
            met = sum(bool(r["fst_alpha_search"]["budget_met"]) for r in chosen)
            lines.append(f"| {dataset} {attack} {rate:g} | {100 * drop:g} | {len(chosen)} | {method} | {strengths} | "
                         f"{cell(drop_rows(chosen), 'drop')} | {cell(chosen, 'attack_success_rate')} | {met} of {len(chosen)} |")  # fmt: skip
    return lines if len(lines) > 2 else []


def gain_over_fst(curve: list[tuple[float, float]], asr: float) -> float | None:
    """FST's C-Acc at `asr`, linearly interpolated along its strengths; None outside the range FST covers."""
    xs, ys = zip(*sorted(curve), strict=True)
    if not xs[0] <= asr <= xs[-1]:
        return None
    return float(np.interp(asr, xs, ys))


def retuned(rows: list[dict]) -> str:
    """The P-ASR after the retuning attack over the seeds that ran it (blank if none did), naming their count when
    that is not every seed."""
    attacked = [r for r in rows if r.get("retuning_attack_success_rate") is not None]
    if not attacked:
        return ""
    text = cell(attacked, "retuning_attack_success_rate")
    return text if len(attacked) == len(rows) else f"{text} ({len(attacked)} of {len(rows)} seeds)"


def affordable_table(cells: Cells, budget: float) -> list[str]:
    """Markdown rows: per cell and variant, the strongest strength whose mean C-Acc drop on the test split stays
    within `budget` - what the budget would buy if the search's estimate of the drop were exact."""
    lines = ["| data set, attack, rate | method | strongest s within the budget on test | seeds | C-Acc change (points) "
             "| ASR (%) |", "| --- | --- | ---: | ---: | ---: | ---: |"]  # fmt: skip
    for (dataset, attack, rate), methods in sorted(cells.items()):
        by_variant: dict[str, list[tuple[float, list[dict]]]] = {}
        for (variant, label), rows in methods.items():
            if variant not in LABELS:
                by_variant.setdefault(variant, []).append((float(label), rows))
        for variant, ladder in sorted(by_variant.items()):
            within = [(s, rows) for s, rows in ladder if -stats(drop_rows(rows), "drop")[0] <= 100 * budget]
            if not within:
                weakest = min(s for s, _ in ladder)
                lines.append(f"| {dataset} {attack} {rate:g} | {variant} | none (s = {weakest:g} costs "
                             f"{cell(drop_rows(dict(ladder)[weakest]), 'drop')}) | | | |")  # fmt: skip
                continue
            strength, rows = max(within, key=lambda item: item[0])
            lines.append(f"| {dataset} {attack} {rate:g} | {variant} | {strength:g} | {len(rows)} | "
                         f"{cell(drop_rows(rows), 'drop')} | {cell(rows, 'attack_success_rate')} |")  # fmt: skip
    return lines


def drop_rows(rows: list[dict]) -> list[dict]:
    """Each record's C-Acc change (after minus before) as `drop`, for `stats` and `cell`."""
    return [{"drop": r["clean_accuracy"] - r["before_clean_accuracy"]} for r in rows]
