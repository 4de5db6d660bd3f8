"""Does `fst_alpha="auto"` estimate its price right when the defender's clean images are ones the model never saw?

The strong grid tunes on 1,000 images drawn from the training split, which the backdoored model was trained on.
There the search's held-out estimate of the C-Acc drop was biased: overstated on CIFAR-10 (the model is more
accurate on images it has seen), understated on GTSRB (100% accurate on them, and the tuned models stay close).
This study tunes the same backdoored models (the strong grid's cache) with the same search, budget and folds, on
1,000 images drawn from the test split instead, and scores every model on the rest of the test split (the
tuning images and the backdoor-test rows made from them left out), beside the grid's run on training images:

    OMP_NUM_THREADS=1 python benchmarks/unseen_tuning.py --data_dir $DATA --dataset cifar10
    OMP_NUM_THREADS=1 python benchmarks/unseen_tuning.py --data_dir $DATA --dataset gtsrb --attacks blended sig \\
        --poison_rates 0.01 0.005
    python benchmarks/unseen_tuning.py --render     # the table, into BENCHMARKS.md

A cell runs only where a run of FST's search on training images exists for the same model (the strong grid's
`fst_alpha=auto` records or the variants study's `fst` `auto` records, same before-C-Acc); others are skipped
with a line saying so. Records go to benchmarks/results/unseen-tuning/<dataset>.jsonl.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np

from hf_fst.attacks import backdoor_test_rows
from hf_fst.benchmark import GridRunner, append_record, read_records
from hf_fst.benchmark.config import add_strong_cell_arguments, strong_grid_config
from hf_fst.benchmark.heldout import estimate, estimate_table, reference_for
from hf_fst.benchmark.records import device_name, replace_section
from hf_fst.tuning.search import strength_record

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "unseen-tuning"  # <dataset>.jsonl
REFERENCES = [ROOT / "benchmarks" / "results" / "strong", ROOT / "benchmarks" / "results" / "variants-auto"]
MARKERS = ("<!-- unseen-tuning:begin -->", "<!-- unseen-tuning:end -->")
COUNT = 1000  # the strong grid's tuning set size
logger = logging.getLogger("unseen_tuning")


def references(dataset: str) -> list[dict]:
    return [r for folder in REFERENCES for r in read_records(folder / f"{dataset}.jsonl")]


def run(args: argparse.Namespace) -> None:
    dataset = args.dataset
    runner = GridRunner(strong_grid_config(dataset, args.data_dir, args.cache_dir))
    results_file = RESULTS / f"{dataset}.jsonl"
    done = {(r["attack"], r["poison_rate"], r["seed"]) for r in read_records(results_file)}
    known = references(dataset)
    data = runner.load(dataset)
    cells = []
    for seed in args.seeds:
        for attack_name in args.attacks:
            for rate in args.poison_rates:
                if (attack_name, rate, seed) in done:
                    continue
                if reference_for(known, dataset, attack_name, rate, seed, args.budget) is None:
                    logger.info("skip %s %g s%d: no run of FST's search on training images", attack_name, rate, seed)
                    continue
                if not runner.has_backdoored_model(dataset, attack_name, rate, seed):  # checked before any tuning
                    raise SystemExit(f"{attack_name} {rate:g} seed {seed}: no cached backdoored model in "
                                     f"{args.cache_dir}; pass the --cache_dir and the --data_dir (exactly as "
                                     "written: the cache key includes it) the strong grid was run with")  # fmt: skip
                cells.append((attack_name, rate, seed))
    for attack_name, rate, seed in cells:
        model, evaluation, info = runner.backdoored_model(dataset, attack_name, rate, seed)
        reference = reference_for(known, dataset, attack_name, rate, seed, args.budget,
                                  info["before_clean_accuracy"])  # fmt: skip
        if reference is None:
            logger.info("skip %s %g s%d: the runs on training images are of another build of this model",
                        attack_name, rate, seed)  # fmt: skip
            continue
        attack = runner.attack(dataset, attack_name, seed)
        rows = runner.tuning_index(dataset, seed, COUNT, "test").numpy()
        source = backdoor_test_rows(data["test_labels"], attack)
        if (data["test_labels"][source] != evaluation.backdoor_original_labels).any():
            raise RuntimeError("the backdoor test set's rows do not follow the test split's order")
        unseen = evaluation.excluding(rows, np.flatnonzero(np.isin(source, rows)))
        before = unseen.evaluate(model)
        folds = reference["fst_alpha_search"]["folds"]
        start = time.perf_counter()
        trainer = runner.tune(model, dataset, "fst", seed, COUNT, "auto", source="test",
                              max_accuracy_drop=args.budget, fst_validation_folds=folds)  # fmt: skip
        record = {
            "dataset": dataset, "model": runner.config.model, "attack": attack_name, "poison_rate": rate,
            "seed": seed, "tuning_source": "test", "num_tuning_samples": COUNT, "max_accuracy_drop": args.budget,
            "fst_validation_folds": folds, **strength_record(trainer),
            "tuning_seconds": round(time.perf_counter() - start, 3), "device": device_name(),
            "num_scored_clean": len(unseen.clean_labels), "num_scored_backdoor": len(unseen.backdoor_labels),
            **{f"before_{k}": v for k, v in before.items()}, **unseen.evaluate(trainer.model),
            "full_test_before_clean_accuracy": info["before_clean_accuracy"],
        }  # fmt: skip
        append_record(results_file, record)
        found = estimate(record)
        logger.info("%s %g s%d: s = %s, held-out drop %.4f, test drop %.4f, ASR %.4f", attack_name, rate, seed,
                    record["fst_alpha_normalized"], found["held_out_drop"], found["test_drop"],
                    record["attack_success_rate"])  # fmt: skip


def render(args: argparse.Namespace) -> None:
    rows = []
    for path in sorted(RESULTS.glob("*.jsonl")):
        known = references(path.stem)  # the file is <dataset>.jsonl, read once for all its runs
        for r in read_records(path):
            reference = reference_for(known, r["dataset"], r["attack"], r["poison_rate"], r["seed"],
                                      r["max_accuracy_drop"], r["full_test_before_clean_accuracy"])  # fmt: skip
            if reference is None:
                raise SystemExit(f"{path}: no training-split run for {r['attack']} seed {r['seed']}; was it removed?")
            rows += [r, {**reference, "tuning_source": "train"}]
    lines = [*estimate_table(rows), "", "| data set, attack, rate, seed | train split: s, held-out / test drop, ASR "
             "| test split: s, held-out / test drop, ASR |", "| --- | --- | --- |"]  # fmt: skip
    for unseen, seen in zip(rows[::2], rows[1::2], strict=True):
        cells = []
        for r in (seen, unseen):
            found = estimate(r)
            cells.append(f"{r['fst_alpha_normalized']:g}, {100 * found['held_out_drop']:.1f} / "
                         f"{100 * found['test_drop']:.1f}, {100 * r['attack_success_rate']:.1f}%")  # fmt: skip
        lines.append(f"| {unseen['dataset']} {unseen['attack']} {unseen['poison_rate']:g} s{unseen['seed']} | "
                     f"{cells[0]} | {cells[1]} |")  # fmt: skip
    text = "\n".join(lines)
    note = "<!-- Rendered by `python benchmarks/unseen_tuning.py --render`. -->"
    replace_section(ROOT / "BENCHMARKS.md", MARKERS, f"{note}\n\n{text}")
    print(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_strong_cell_arguments(parser, str(ROOT / "benchmarks" / "cache"))
    parser.add_argument("--budget", type=float, default=0.02, help="The search's accuracy budget (a fraction).")
    parser.add_argument("--render", action="store_true", help="Render the tables from the records.")
    args = parser.parse_args()
    if not 0 < args.budget < 1:
        parser.error(f"--budget {args.budget:g}: the accuracy drop is a fraction in (0, 1), e.g. 0.02 for 2 points")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("hf_fst").setLevel(logging.WARNING)
    if args.render:
        render(args)
    else:
        run(args)
        print(json.dumps({"records": len(read_records(RESULTS / f"{args.dataset}.jsonl"))}))


if __name__ == "__main__":
    main()
