#!/usr/bin/env python
"""Import a BackdoorBench or official-FST checkpoint as a transformers model folder.

    python recipes/import_checkpoint.py --checkpoint attack_result.pt --format backdoorbench --output_dir bb-model

The same command as `hf-fst import-checkpoint` (see `hf_fst/scripts/import_checkpoint.py` and `--help`).
"""

from hf_fst.cli import run_command
from hf_fst.scripts.import_checkpoint import main, make_parser  # noqa: F401

if __name__ == "__main__":
    raise SystemExit(run_command(main))
