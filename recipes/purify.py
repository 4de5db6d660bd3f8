#!/usr/bin/env python
"""Purify a possibly backdoored image classifier with FST (or a baseline tuning mode); report C-Acc, ASR, RA.

    python recipes/purify.py --model_id ./backdoored --dataset_name uoft-cs/cifar10 \
        --attack badnet --tuning_mode fst --fst_alpha 0.2 --output_dir ./purified
    accelerate launch --config_file recipes/accelerate_configs/cpu_2proc.yaml recipes/purify.py ... --use_cpu
    python recipes/purify.py --config purify.yaml --seed 1      # YAML values as defaults, flags override them

The same command as `hf-fst purify` (see `hf_fst/scripts/purify.py` and `--help` for every flag); this file is
the front end to run with `python` or `accelerate launch`.
"""

from hf_fst.cli import run_command
from hf_fst.scripts.purify import main, make_parser, prepare  # noqa: F401

if __name__ == "__main__":
    raise SystemExit(run_command(main))
