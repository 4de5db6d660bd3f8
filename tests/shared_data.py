"""Where the tests find the local copies of CIFAR-10 and GTSRB (Hub parquet layout), passed as a data-set path.

`HF_FST_DATA_DIR` points elsewhere; tests that need a copy skip when it is absent.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("HF_FST_DATA_DIR", REPO.parent / "shared" / "data"))
CIFAR = DATA_DIR / "cifar10-jpeg"
GTSRB = DATA_DIR / "gtsrb-32"
