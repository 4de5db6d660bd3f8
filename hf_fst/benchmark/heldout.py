"""How well `fst_alpha="auto"` estimates its own price: the held-out drop it chose by against the test-split drop.

The search judges each strength on held-out tuning images. When those come from the model's training split, the
model has seen them, and the estimate is biased (its baseline is too high, or the tuned model stays as close to
it as on memorised images). These helpers compare runs that tuned on training images with runs that tuned on
test images the model never saw, scored on the rest of the test split.
"""

from __future__ import annotations

from typing import Any

from hf_fst.benchmark.plots import cell

__all__ = ["estimate", "held_out_drop", "reference_for", "estimate_table"]

Record = dict[str, Any]


def held_out_drop(search: Record) -> float:
    """The drop the search saw for the strength it kept: held-out baseline minus that strength's held-out accuracy."""
    chosen = [t for t in search["tries"] if t["fst_alpha_normalized"] == search["chosen"]]
    if len(chosen) != 1:
        raise ValueError(f"search: the chosen strength {search['chosen']!r} is not exactly one of its tries")
    return search["baseline_accuracy"] - chosen[0]["validation_accuracy"]


def estimate(record: Record) -> Record:
    """A run's estimate, its test-split drop and their difference (positive: the search overstated the price)."""
    held_out = held_out_drop(record["fst_alpha_search"])
    test = record["before_clean_accuracy"] - record["clean_accuracy"]
    return {"held_out_drop": held_out, "test_drop": test, "overstatement": held_out - test}


def reference_for(records: list[Record], dataset: str, attack: str, rate: float, seed: int, budget: float,
                  before_clean_accuracy: float | None = None) -> Record | None:  # fmt: skip
    """The run of FST's search that tuned on training images, from the strong grid (`fst_alpha="auto"`) or the
    variants study (`variant="fst"`, `strength="auto"`); with `before_clean_accuracy`, only one on the same
    backdoored model (a rebuilt one differs there)."""
    found = [
        r for r in records
        if (r["dataset"], r["attack"], r["poison_rate"], r["seed"]) == (dataset, attack, rate, seed)
        and r.get("max_accuracy_drop") == budget and r.get("fst_alpha_search")
        and (r.get("tuning_mode") == "fst" or (r.get("variant") == "fst" and r.get("strength") == "auto"))
        and before_clean_accuracy in (None, r["before_clean_accuracy"])
    ]  # fmt: skip
    return found[-1] if found else None


def estimate_table(records: list[Record]) -> list[str]:
    """Markdown rows: per data set and tuning source, the held-out drop, the test drop and the overstatement
    (points, mean ± sd over the runs), how many runs stayed within budget + 1 on test, and the ASR left."""
    lines = ["| data set | tuning images from | runs | held-out drop | test drop | overstatement | within budget + 1 "
             "| ASR (%) |", "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
    groups: dict[tuple[str, str], list[Record]] = {}
    for r in records:
        groups.setdefault((r["dataset"], r["tuning_source"]), []).append(r)
    for (dataset, source), rows in sorted(groups.items()):
        points = [estimate(r) for r in rows]
        within = sum(
            round(p["test_drop"] - r["max_accuracy_drop"], 9) <= 0.01 for p, r in zip(points, rows, strict=True)
        )
        lines.append(f"| {dataset} | {source} split | {len(rows)} | {cell(points, 'held_out_drop')} | "
                     f"{cell(points, 'test_drop')} | {cell(points, 'overstatement')} | {within} of {len(rows)} | "
                     f"{cell(rows, 'attack_success_rate')} |")  # fmt: skip
    return lines
