#!/usr/bin/env python
"""Poison an image data set with a backdoor attack and train a classifier on it (the model to purify later).

    python recipes/train_backdoor.py --dataset_name uoft-cs/cifar10 --model_id ./resnet-config \
        --attack badnet --poison_rate 0.05 --target_label 0 --num_train_epochs 20 --output_dir ./backdoored

The same command as `hf-fst train-backdoor` (see `hf_fst/scripts/train_backdoor.py` and `--help` for every flag); this file is
the front end to run with `python` or `accelerate launch`.
"""

from hf_fst.cli import run_command
from hf_fst.scripts.train_backdoor import main, make_parser, prepare  # noqa: F401

if __name__ == "__main__":
    raise SystemExit(run_command(main))
