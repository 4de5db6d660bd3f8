#!/usr/bin/env python
"""The resumable benchmark grid: backdoor, then purify with every tuning mode, one JSON line per run.

    python recipes/benchmark.py --datasets cifar10 --attacks badnet blended sig --poison_rates 0.01 0.005 \
        --seeds 0 1 2 --results_file benchmarks/results.jsonl [--data_dir ./data]

The same command as `hf-fst benchmark` (see `hf_fst/scripts/benchmark.py` and `--help` for every flag); this file is
the front end to run with `python` or `accelerate launch`.
"""

from hf_fst.cli import run_command
from hf_fst.scripts.benchmark import main, make_parser  # noqa: F401

if __name__ == "__main__":
    raise SystemExit(run_command(main))
