"""Resumable benchmark grid: backdoor, then purify with every tuning mode, one JSON line per run.

    python recipes/benchmark.py --datasets cifar10 --attacks badnet blended sig wanet \
        --poison_rates 0.01 0.005 --seeds 0 1 2 --results_file benchmarks/results.jsonl

Finished cells (same data set, model, attack, rate, seed, mode and tuning settings) are skipped, and
backdoored models are cached under `--cache_dir`, so the command can be stopped and started again.
"""

from __future__ import annotations

import logging
import sys

import torch
from transformers import HfArgumentParser

from hf_fst.grid import GridConfig, GridRunner


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(format="%(asctime)s %(message)s", level=logging.INFO)
    (config,) = HfArgumentParser(GridConfig).parse_args_into_dataclasses(args=argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    written = GridRunner(config).run()
    print(f"{len(written)} new record(s) in {config.results_file}", file=sys.stderr)


if __name__ == "__main__":
    main()
