"""Variants of FST beside the paper's, on the strong-model grid's backdoored models: is there a better trade-off?

Each variant is an `FSTTrainer` subclass (or, for the cross-entropy phase, a second run), tuned on the same 1,000
clean images with the same settings as the grid's `fst` rows, at several scale-free strengths s = alpha x ||W0||^2:

- `fst`: the paper's penalty, s * <W, W0> / ||W0||^2 (the paper's alpha 0.2 is s = 5.8-5.9 on these heads);
- `fst-decay`: the same penalty with s decaying to 0 over training (half a cosine);
- `fst-orth`: s * cos^2(W, W0) instead of s * cos(W, W0): drive the new head orthogonal to W0, not against it;
- `fst-kd`: the paper's penalty plus a distillation term, T^2 * KL(teacher || student) at temperature T = 2,
  the teacher being the backdoored model on the same (clean, augmented) tuning batches;
- `fst-ce`: the paper's FST, then 2 epochs of plain fine-tuning (cross-entropy only, lr 0.001);
- `fst-decay-kd`: the decaying penalty and the distillation term together.

    OMP_NUM_THREADS=1 python benchmarks/fst_variants.py --data_dir $DATA --attacks blended sig lc --seeds 0
    OMP_NUM_THREADS=1 python benchmarks/fst_variants.py --data_dir $DATA --dataset gtsrb --seeds 0
    python benchmarks/fst_variants.py --render      # the table and the frontier plot, into BENCHMARKS.md

`--retuning_attack` also runs the grid's retuning attack (5 poisoned images among the tuning set, see
`hf_fst.benchmark.retuning`) on each tuned model and records the P-ASR; a run's earlier record without it is
replaced. Only on the same backdoored model, though: a cache rebuilt on another stack gives a slightly different
one, and the run refuses (before tuning) when the earlier record's before-metrics differ; pass --results_file to
keep such runs apart.

The backdoored models come from the strong grid's cache (`benchmarks/cache`), trained there if missing. The
paper's FST and FT to compare with come from the strong grid's records of the same model; when those records were
made on another build of it (their before-metrics differ), both are tuned here too, on this model, and recorded
beside the variants (`variant` "fst (paper alpha)" and "ft"), so a rebuilt model is never compared with another's.

`--budget 0.02` runs each named variant with `fst_alpha="auto"` instead (the strongest strength whose held-out
accuracy stays within the budget, see `hf_fst.tuning.search`), into benchmarks/results/variants-auto/:

    OMP_NUM_THREADS=1 python benchmarks/fst_variants.py --data_dir $DATA --variants fst-kd --budget 0.02 \\
        --validation_folds 2
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from hf_fst import FSTTrainer
from hf_fst.benchmark import GridRunner, read_records
from hf_fst.benchmark.config import add_strong_cell_arguments, strong_grid_config
from hf_fst.benchmark.plots import cell, stats
from hf_fst.benchmark.records import device_name, head_norm_squared, replace_section
from hf_fst.benchmark.retuning import retune, retuning_tensors
from hf_fst.benchmark.sources import DATASETS
from hf_fst.benchmark.variants import (
    PAPER,
    affordable_table,
    budget_table,
    gain_over_fst,
    is_paper_fst,
    points,
    retuned,
)
from hf_fst.tuning.search import strength_record

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "variants"  # <dataset>.jsonl
AUTO_RESULTS = ROOT / "benchmarks" / "results" / "variants-auto"  # <dataset>.jsonl: the variants within a budget
STRONG = ROOT / "benchmarks" / "results" / "strong"  # the strong grid's records, <dataset>.jsonl
PLOT = ROOT / "benchmarks" / "plots" / "fst_variants_frontier.png"
MARKERS = ("<!-- variants:begin -->", "<!-- variants:end -->")
DISTILL_TEMPERATURE = 2.0
CE_PHASE = {"epochs": 2, "learning_rate": 0.001}
logger = logging.getLogger("fst_variants")


class DecayingFST(FSTTrainer):
    """The paper's penalty with its weight decaying from s to 0 over training (half a cosine)."""

    def fst_penalty(self) -> torch.Tensor:
        progress = self.state.global_step / max(self.state.max_steps, 1)
        return super().fst_penalty() * 0.5 * (1.0 + math.cos(math.pi * progress))


class OrthogonalFST(FSTTrainer):
    """s * cos^2(W, W0): the new head is pushed to be orthogonal to the backdoored one rather than opposite."""

    def fst_penalty(self) -> torch.Tensor:
        weight = self.head.weight.float()
        cosine = (weight * self.fst_w0).sum() / (weight.norm() * self.fst_w0_norm).clamp_min(1e-12)
        return self.fst_alpha_normalized * cosine.square()


class DistillingFST(FSTTrainer):
    """The paper's FST plus T^2 * KL(teacher || student) on the tuning batches; `teacher` is set per model."""

    teacher: torch.nn.Module

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, outputs = super().compute_loss(model, inputs, True, num_items_in_batch)
        if model.training:
            teacher = self.teacher.to(outputs.logits.device)
            with torch.no_grad():
                target = teacher(pixel_values=inputs["pixel_values"]).logits.float()
            t = DISTILL_TEMPERATURE
            student = F.log_softmax(outputs.logits.float() / t, dim=-1)
            kd = F.kl_div(student, F.log_softmax(target / t, dim=-1), log_target=True, reduction="batchmean")
            loss = loss + kd * t * t
        return (loss, outputs) if return_outputs else loss


class DecayingDistillingFST(DistillingFST, DecayingFST):
    """Both: the decaying penalty and the distillation term."""


VARIANTS: dict[str, type[FSTTrainer]] = {"fst": FSTTrainer, "fst-decay": DecayingFST, "fst-orth": OrthogonalFST,
                                         "fst-kd": DistillingFST, "fst-ce": FSTTrainer,
                                         "fst-decay-kd": DecayingDistillingFST}  # fmt: skip
"""The variants as `FSTTrainer` subclasses: none is an `FSTConfig` option, since none dominated the paper's FST."""
DEFAULT_STRENGTHS = {"fst": [2.0, 4.0, 8.0], "fst-decay": [4.0, 8.0, 16.0], "fst-orth": [4.0, 16.0],
                     "fst-kd": [4.0, 8.0, 16.0, 32.0], "fst-ce": [4.0, 8.0], "fst-decay-kd": [8.0, 16.0, 32.0]}  # fmt: skip


def run_variant(runner: GridRunner, dataset: str, model, variant: str, strength: float | str, seed: int,
                **overrides):  # fmt: skip
    """Tune a copy of the backdoored `model` with one variant; returns the tuned model and what strength it used
    (`strength` "auto" searches for one, with `overrides` such as `max_accuracy_drop`)."""
    trainer_class = VARIANTS[variant]
    if issubclass(trainer_class, DistillingFST):  # the teacher: the backdoored model itself, frozen
        teacher = copy.deepcopy(model).eval().requires_grad_(False)
        trainer_class = type(f"{trainer_class.__name__}ForModel", (trainer_class,), {"teacher": teacher})
    trainer = runner.tune(model, dataset, "fst", seed, 1000, strength, trainer_class=trainer_class, **overrides)
    tuned, used = trainer.model, strength_record(trainer)
    if variant == "fst-ce":
        data = runner.load(dataset)
        index = runner.tuning_index(dataset, seed, 1000)
        tuned = runner.train_model(
            tuned, data["train_images"][index], data["train_labels"][index], CE_PHASE["epochs"],
            CE_PHASE["learning_rate"], seed, tempfile.mkdtemp(prefix="ce-phase-"), runner.config.tuning_augment,
            DATASETS[dataset]["flip"], tuning_mode="ft",
        ).model  # fmt: skip
    return tuned, used


def grid_tuned_this_model(strong: list[dict], dataset: str, attack: str, rate: float, seed: int, info: dict) -> bool:
    """Whether the strong grid's records hold the paper's FST on this very backdoored model (same before-metrics)."""
    return any(
        (r["dataset"], r["attack"], r["poison_rate"], r["seed"]) == (dataset, attack, rate, seed) and is_paper_fst(r)
        and all(r.get(name) == info.get(name) for name in ("before_clean_accuracy", "before_attack_success_rate"))
        for r in strong
    )  # fmt: skip


def results_path(args: argparse.Namespace) -> Path:
    """Where the runs of `--dataset` go: `--results_file`, else benchmarks/results/variants[-auto]/<dataset>.jsonl."""
    if args.results_file:
        return Path(args.results_file)
    return (AUTO_RESULTS if args.budget is not None else RESULTS) / f"{args.dataset}.jsonl"


def _key(record: dict) -> tuple:
    return record["attack"], record["poison_rate"], record["seed"], record["variant"], record["strength"]


def replace_record(path: Path, record: dict) -> None:
    """Write `record` in place of any earlier record of the same run (atomically: a temporary file, renamed)."""
    kept = [r for r in read_records(path) if _key(r) != _key(record)]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in [*kept, record]))
    os.replace(tmp, path)


def check_same_model(earlier: dict[tuple, dict], info: dict, keys: list[tuple], results_file: Path) -> None:
    """Refuse to replace a record made on another backdoored model (its before-metrics differ from this one's)."""
    for key in keys:
        old = earlier.get(key)
        if old is None:
            continue
        for name in ("before_clean_accuracy", "before_attack_success_rate"):
            if old.get(name) != info.get(name):
                raise ValueError(
                    f"--results_file={str(results_file)!r} holds {key} from another backdoored model ({name} "
                    f"{old.get(name)} there, {info.get(name)} now); pass another --results_file to keep the runs apart"
                )


def planned(args: argparse.Namespace, attack: str, rate: float, seed: int, done: set) -> list[tuple[str, object]]:
    """The (variant, strength) runs still to do in a cell: each variant's strengths, or "auto" with `--budget`."""
    return [(v, s) for v in args.variants
            for s in (["auto"] if args.budget is not None else DEFAULT_STRENGTHS[v])
            if (attack, rate, seed, v, s) not in done and (s == "auto" or not args.strengths or s in args.strengths)]  # fmt: skip


def tune_reference(runner: GridRunner, dataset: str, model, method: str, seed: int):
    """The paper's FST (the data set's raw alpha) or FT on `model`, as the strong grid tunes them."""
    alpha = DATASETS[dataset]["fst_alpha"]
    mode = "fst" if method == PAPER else "ft"
    trainer = runner.tune(model, dataset, mode, seed, 1000, alpha, normalize_fst_alpha=False)
    return trainer.model, strength_record(trainer)


def run(args: argparse.Namespace) -> None:
    dataset, results_file = args.dataset, results_path(args)
    runner = GridRunner(strong_grid_config(dataset, args.data_dir, args.cache_dir))
    strong = read_records(STRONG / f"{dataset}.jsonl")
    retuning_samples = runner.config.retuning_poisoned_samples
    earlier = {_key(r): r for r in read_records(results_file)}
    done = {key for key, r in earlier.items()
            if not args.retuning_attack or r.get("retuning_attack_success_rate") is not None}  # fmt: skip
    budget = {} if args.budget is None else {"max_accuracy_drop": args.budget,
                                             "fst_validation_folds": args.validation_folds}  # fmt: skip
    for seed in args.seeds:
        for attack in args.attacks:
            for rate in args.poison_rates:
                todo = planned(args, attack, rate, seed, done)
                if not todo:
                    continue
                model, evaluation, info = runner.backdoored_model(dataset, attack, rate, seed)
                if args.budget is None and not grid_tuned_this_model(strong, dataset, attack, rate, seed, info):
                    logger.info("%s %g s%d: the grid's records are of another build of this model; tuning the "
                                "paper's FST and FT on it here", attack, rate, seed)  # fmt: skip
                    todo += [(m, None) for m in (PAPER, "ft") if (attack, rate, seed, m, None) not in done]
                check_same_model(earlier, info, [(attack, rate, seed, v, s) for v, s in todo], results_file)
                retuning = None
                if args.retuning_attack:
                    poison = runner.attack(dataset, attack, seed)
                    retuning = (
                        dataset,
                        *retuning_tensors(runner, dataset, poison, seed, 1000, retuning_samples),
                        seed,
                    )
                for variant, strength in todo:
                    start = time.perf_counter()
                    if variant in (PAPER, "ft"):
                        tuned, used = tune_reference(runner, dataset, model, variant, seed)
                    else:
                        tuned, used = run_variant(runner, dataset, model, variant, strength, seed, **budget)
                    record = {
                        "dataset": dataset, "model": runner.config.model, "attack": attack, "poison_rate": rate,
                        "seed": seed, "variant": variant, "strength": strength, **used, **budget,
                        "distill_temperature": DISTILL_TEMPERATURE if variant.endswith("-kd") else None,
                        "ce_phase": CE_PHASE if variant == "fst-ce" else None,
                        "tuning_seconds": round(time.perf_counter() - start, 3),
                        "head_weight_norm_squared": head_norm_squared(model), "device": device_name(),
                        **{k: v for k, v in info.items() if k.startswith("before_")},
                        **evaluation.evaluate(tuned),
                    }  # fmt: skip
                    if retuning is not None:
                        after = evaluation.evaluate(retune(runner, tuned, *retuning))
                        record["retuning_poisoned_samples"] = retuning_samples
                        record["retuning_attack_success_rate"] = after["attack_success_rate"]
                        record["retuning_clean_accuracy"] = after["clean_accuracy"]
                    replace_record(results_file, record)
                    logger.info("%s %g s%d %s %s: C-Acc %.4f ASR %.4f P-ASR %s (s = %s)", attack, rate, seed, variant,
                                strength, record["clean_accuracy"], record["attack_success_rate"],
                                record.get("retuning_attack_success_rate"), record["fst_alpha_normalized"])  # fmt: skip


# ------------------------------------------------------------------------------------------------ render
def render(args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = [args.results_file] if args.results_file else sorted(RESULTS.glob("*.jsonl"))
    records = [r for path in files for r in read_records(path)]
    strong = [r for path in sorted(STRONG.glob("*.jsonl")) for r in read_records(path)]
    cells = points(records, strong)
    lines = ["| data set, attack, rate | method | s | seeds | C-Acc (%) | ASR (%) | P-ASR (%) | C-Acc vs FST at that ASR "
             "(pts) | dominates paper FST |", "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | :---: |"]  # fmt: skip
    wins: dict[tuple[str, str], list[bool]] = {}
    columns = min(len(cells), 3)
    rows_count = math.ceil(len(cells) / columns)
    figure, axes = plt.subplots(rows_count, columns, figsize=(5 * columns, 4.2 * rows_count), squeeze=False)
    for axis in axes.flat[len(cells) :]:
        axis.set_visible(False)
    for axis, ((dataset, attack, rate), methods) in zip(axes.flat, sorted(cells.items()), strict=False):
        fst = [(stats(rows, "attack_success_rate")[0], stats(rows, "clean_accuracy")[0])
               for (v, _), rows in methods.items() if v in ("fst", PAPER)]  # fmt: skip
        by_variant: dict[str, list[tuple[float, float, str]]] = {}
        paper_rows = next(rows for (v, _), rows in methods.items() if v == PAPER)

        def paper_on(rows, paper_rows=paper_rows):  # the paper's FST on the same seeds as `rows`
            same = [r for r in paper_rows if r["seed"] in {row["seed"] for row in rows}]
            return stats(same, "clean_accuracy")[0], stats(same, "attack_success_rate")[0]

        def strength(label, rows):  # the paper's alpha is a slightly different s on each seed's head
            if label == "paper":
                return f"{np.mean([r['fst_alpha_normalized'] for r in rows]):.1f}"
            return label

        def order(item):
            (variant, label), rows = item
            return (variant == "ft", variant, float(strength(label, rows)) if label != "-" else 0.0)

        for (variant, label), rows in sorted(methods.items(), key=order):
            label = strength(label, rows)
            acc, asr = stats(rows, "clean_accuracy")[0], stats(rows, "attack_success_rate")[0]
            reference = gain_over_fst(fst, asr) if variant not in ("fst", PAPER, "ft") else None
            gain = "" if reference is None else f"{acc - reference:+.1f}"
            dominates = ""  # equal or lower mean ASR and higher mean C-Acc than the paper's FST on the same seeds
            if variant not in (PAPER, "ft"):
                paper = paper_on(rows)
                won = asr <= paper[1] and acc > paper[0]
                wins.setdefault((variant, label), []).append(won)
                dominates = "yes" if won else "no"
            lines.append(f"| {dataset} {attack} {rate:g} | {variant} | {label} | {len(rows)} | {cell(rows, 'clean_accuracy')} | "
                         f"{cell(rows, 'attack_success_rate')} | {retuned(rows)} | {gain} | {dominates} |")  # fmt: skip
            by_variant.setdefault(variant.split(" ")[0], []).append((asr, acc, label))
        for variant, pts in sorted(by_variant.items()):
            pts.sort()
            color = plt.get_cmap("tab10")([*VARIANTS, "ft"].index(variant))
            axis.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=variant, color=color)
            for asr, acc, label in pts:
                axis.annotate(label, (asr, acc), fontsize=7, xytext=(3, 3), textcoords="offset points")
        axis.set(title=f"{dataset} {attack} {rate:g}", xlabel="ASR (%)", ylabel="C-Acc (%)")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    figure.suptitle("preact-resnet-18-w0.25: FST variants (labels: strength s = alpha x ||W0||^2)")
    figure.tight_layout()
    PLOT.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(PLOT, dpi=110)
    overall = [f"{variant} at s = {label}: {sum(won)} of {len(won)} cells"
               for (variant, label), won in sorted(wins.items()) if any(won)]  # fmt: skip
    lines += ["", "Dominates the paper's FST (mean over the seeds; equal or lower ASR, higher C-Acc): "
              + ("; ".join(overall) if overall else "no variant in any cell") + "."]  # fmt: skip
    lines += ["", f"What a {100 * args.render_budget:g}-point budget buys at best: the strongest strength of each variant "
              "whose mean C-Acc drop on the test split is within it (an exact estimate of the drop; `auto` has to "
              "estimate it on held-out tuning images).", "", *affordable_table(cells, args.render_budget)]  # fmt: skip
    auto = [r for path in sorted(AUTO_RESULTS.glob("*.jsonl")) for r in read_records(path)]
    table = budget_table(auto, strong)
    if table:
        lines += ["", "Within a budget (`fst_alpha=auto`): the variant's search against FST's, on the same backdoored "
                  "models; chosen s by seed, C-Acc change on the test split.", "", *table]  # fmt: skip
    text = "\n".join(lines)
    note = "<!-- Rendered by `python benchmarks/fst_variants.py --render`. -->"
    replace_section(
        ROOT / "BENCHMARKS.md", MARKERS, f"{note}\n\n{text}\n\n![FST variants](benchmarks/plots/{PLOT.name})"
    )
    print(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_strong_cell_arguments(parser, str(ROOT / "benchmarks" / "cache"))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--strengths", nargs="+", type=float, default=None, help="Only these of each variant's.")
    parser.add_argument("--results_file", default=None, help="Default: benchmarks/results/variants/<dataset>.jsonl.")
    parser.add_argument("--retuning_attack", action="store_true", help="Also run the retuning attack (P-ASR).")
    parser.add_argument(
        "--budget",
        type=float,
        default=None,
        help="Run each variant with fst_alpha='auto' within this accuracy drop (a fraction, e.g. 0.02).",
    )
    parser.add_argument(
        "--validation_folds",
        type=int,
        default=None,
        help="With --budget: held-out folds per candidate (default: the library's automatic rule).",
    )
    parser.add_argument("--render", action="store_true", help="Render the table and plot from the records.")
    parser.add_argument("--render_budget", type=float, default=0.02, help="With --render: the budget of the table "
                        "of the strongest strength within it on the test split.")  # fmt: skip
    args = parser.parse_args()
    if args.budget is not None and not 0 < args.budget < 1:
        parser.error(f"--budget {args.budget:g}: the accuracy drop is a fraction in (0, 1), e.g. 0.02 for 2 points")
    if args.validation_folds is not None and args.budget is None:
        parser.error("--validation_folds applies only to a search: pass --budget as well, e.g. --budget 0.02")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("hf_fst").setLevel(logging.WARNING)
    if args.render:
        render(args)
    else:
        run(args)
    print(json.dumps({"records": len(read_records(results_path(args)))}))


if __name__ == "__main__":
    main()
