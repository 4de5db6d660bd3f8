"""The resumable benchmark grid: backdoor, then purify with every tuning mode, one JSON line per run.

    hf-fst benchmark --datasets cifar10 --attacks badnet blended sig --poison_rates 0.01 0.005 --seeds 0 1 2
    python recipes/benchmark.py --config grid.yaml --data_dir ./data   # <data_dir>/cifar10 instead of the Hub

Finished cells (same data set, model, attack, rate, seed, mode and tuning settings) are skipped, and backdoored
models are cached under `--cache_dir`, so the command can be stopped and started again.
"""

from __future__ import annotations

import logging
import sys

from hf_fst.arguments import RecipeParser, recipe_parser
from hf_fst.benchmark import GridConfig, GridRunner
from hf_fst.console import configure_console
from hf_fst.errors import ConfigurationError


def make_parser() -> RecipeParser:
    """The grid's flags (`GridConfig`) and `--config`."""
    return recipe_parser((GridConfig,))


def main(argv: list[str] | None = None) -> list[dict]:
    """Run every unfinished cell; returns the records this call wrote."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    try:
        (config,) = make_parser().parse(argv)
    except ValueError as err:  # GridConfig checks its own fields
        raise ConfigurationError(str(err)) from err
    configure_console(disable_tqdm=config.disable_tqdm)
    try:
        written = GridRunner(config).run()
    except ValueError as err:  # a data set that cannot be found or read: before any training
        if "--data_dir" in str(err) or "--datasets" in str(err):
            raise ConfigurationError(str(err)) from err
        raise
    print(f"{len(written)} new record(s) in {config.results_file}", file=sys.stderr)
    return written
