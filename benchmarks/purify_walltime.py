"""Wall time of one `recipes/purify.py` run, split into start-up, data preparation, tuning, evaluation and saving.

    OMP_NUM_THREADS=1 python benchmarks/purify_walltime.py --model_id <backdoored model folder> --repeats 3

purify.py logs `wall seconds: {...}` at the end: start-up runs from process creation to the start of `main`
(interpreter and imports); data preparation covers argument checks, loading the data set and the model, the
tuning-set draw and building the backdoor test set; evaluation is the before and after evaluation on the full
test split (clean and triggered); saving writes the model, card and results. This script runs the recipe as
a subprocess, also times it from outside, and writes `benchmarks/results/purify_walltime.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MARKER = "wall seconds: "


def run_once(args: argparse.Namespace, output_dir: str) -> dict[str, float]:
    command = [
        sys.executable, str(ROOT / "recipes" / "purify.py"), "--model_id", args.model_id,
        "--dataset_name", args.dataset_name, "--attack", args.attack, "--tuning_mode", args.tuning_mode,
        "--seed", "0", "--output_dir", output_dir, "--report_to", "none", "--disable_tqdm", "true",
    ]  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=os.environ.copy(), check=False)
    total = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"purify.py failed ({done.returncode}):\n{done.stderr[-2000:]}")
    line = next(line for line in done.stderr.splitlines()[::-1] if MARKER in line)
    phases = json.loads(line.split(MARKER, 1)[1])
    return {**phases, "total_outside": total}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model_id", required=True, help="Backdoored model folder (e.g. one from the grid cache).")
    parser.add_argument("--dataset_name", default="uoft-cs/cifar10")
    parser.add_argument("--attack", default="badnet")
    parser.add_argument("--tuning_mode", default="fst")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "purify_walltime.json"))
    args = parser.parse_args()
    runs = []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            runs.append(run_once(args, str(Path(tmp) / "purified")))
            print(json.dumps(runs[-1]), flush=True)
    phases = list(runs[0])
    summary = {
        phase: {
            "mean": float(np.mean([r[phase] for r in runs])),
            "std": float(np.std([r[phase] for r in runs], ddof=1)),
        }
        for phase in phases
    }
    result = {
        "command": "OMP_NUM_THREADS=1 python benchmarks/purify_walltime.py --model_id <model> "
        f"--attack {args.attack} --tuning_mode {args.tuning_mode} --repeats {args.repeats}",
        "dataset": Path(args.dataset_name).name,
        "threads": os.environ.get("OMP_NUM_THREADS"),
        "runs": runs,
        "summary": summary,
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    for phase, values in summary.items():
        print(f"{phase:>18}: {values['mean']:7.2f} s ± {values['std']:.2f}")


if __name__ == "__main__":
    main()
