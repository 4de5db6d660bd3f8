#!/usr/bin/env python
"""Peak memory (max RSS) of poisoning all 50,000 CIFAR-10 training images, map-style and streaming.

    OMP_NUM_THREADS=1 python benchmarks/poisoning_memory.py [--data uoft-cs/cifar10 | local folder] [--rate 0.1]
    OMP_NUM_THREADS=1 python benchmarks/poisoning_memory.py --repeat 4 --row_group_size 10000   # 200,000 rows

Each mode runs in a fresh Python process so its peak is its own; the peak is `ru_maxrss` of that process, read
after imports (the baseline), after loading the data set and after poisoning every row. Map-style poisoning writes
its result to an Arrow cache file in a temporary folder (memory-mapped, not held in RAM); streaming iterates the
poisoned rows once, one map batch at a time, without writing anything. `--repeat K` / `--row_group_size R` first
write a temporary copy of the training split repeated K times in parquet row groups of R rows, to check that the
peak does not grow with the number of rows (a stream reads one parquet row group at a time).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = "uoft-cs/cifar10"  # or a local copy: --data path/to/cifar10


def max_rss_mib() -> float:
    """Peak resident set size of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def child(mode: str, data: str, rate: float, attack_name: str, batch_size: int) -> dict:
    from datasets import Image, load_dataset

    from hf_fst.attacks import get_attack, poison_dataset
    from hf_fst.attacks.streaming import poison_iterable_dataset

    figures = {"mode": mode, "attack": attack_name, "poison_rate": rate, "batch_size": batch_size}
    figures["rss_after_imports_mib"] = round(max_rss_mib(), 1)
    attack = get_attack(attack_name, target_label=0)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as cache:
        if mode == "map":
            train = load_dataset(data, split="train", cache_dir=cache)
            figures["rss_after_load_mib"] = round(max_rss_mib(), 1)
            poisoned = poison_dataset(train, attack, rate, seed=0, batch_size=batch_size)
            rows = len(poisoned)
            num_poisoned = int(sum(poisoned.with_format("arrow")["is_poisoned"].to_pylist()))
        else:
            stream = load_dataset(data, split="train", streaming=True)
            figures["rss_after_load_mib"] = round(max_rss_mib(), 1)
            poisoned = poison_iterable_dataset(stream, attack, rate, seed=0, batch_size=batch_size)
            poisoned = poisoned.cast_column("img", Image(decode=False))  # count rows; do not decode them again
            rows = num_poisoned = 0
            for row in poisoned:
                rows += 1
                num_poisoned += bool(row["is_poisoned"])
    figures.update(
        rows=rows,
        num_poisoned=num_poisoned,
        seconds=round(time.perf_counter() - start, 1),
        peak_rss_mib=round(max_rss_mib(), 1),
    )
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--rate", type=float, default=0.1)
    parser.add_argument("--attack", default="badnet")
    parser.add_argument("--batch_size", type=int, default=1000)
    parser.add_argument("--modes", default="map,stream")
    parser.add_argument("--repeat", type=int, default=None, help="Repeat the training split K times (scaling).")
    parser.add_argument("--row_group_size", type=int, default=None, help="Parquet row-group size of the copy.")
    parser.add_argument("--child", choices=("map", "stream"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.data, args.rate, args.attack, args.batch_size)))
        return
    if not Path(args.data).exists():
        raise SystemExit(f"error: --data={args.data!r} does not exist; pass the CIFAR-10 folder")
    with tempfile.TemporaryDirectory() as scratch:
        if args.repeat or args.row_group_size:
            args.data = _copy(Path(args.data), Path(scratch), args.repeat or 1, args.row_group_size)
        _run_children(args)


def _copy(data: Path, scratch: Path, repeat: int, row_group_size: int | None) -> str:
    """The training split repeated `repeat` times, written with the given row-group size (parent process only)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(next((data / "data").glob("train-*.parquet")))
    (scratch / "data").mkdir()
    pq.write_table(
        pa.concat_tables([table] * repeat),
        scratch / "data" / "train-00000-of-00001.parquet",
        row_group_size=row_group_size or table.num_rows,
    )
    return str(scratch)


def _run_children(args: argparse.Namespace) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    for mode in args.modes.split(","):
        cmd = [sys.executable, __file__, "--child", mode, "--data", args.data, "--rate", str(args.rate)]
        cmd += ["--attack", args.attack, "--batch_size", str(args.batch_size)]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f"error: {mode} run failed:\n{done.stderr[-2000:]}")
        print(done.stdout.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
