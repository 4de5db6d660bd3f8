"""The backdoor-removal benchmark: a resumable grid of data sets x attacks x rates x seeds x tuning modes.

It imports the library and is never imported by it; `hf-fst benchmark` and `recipes/benchmark.py` run it.
"""

from hf_fst.benchmark.architectures import ARCHITECTURES, MODELS, build_model
from hf_fst.benchmark.grid import DATASETS, GridConfig, GridRunner
from hf_fst.benchmark.records import RECORD_KEY, append_record, read_records, summarize

__all__ = [
    "ARCHITECTURES",
    "DATASETS",
    "MODELS",
    "RECORD_KEY",
    "GridConfig",
    "GridRunner",
    "append_record",
    "build_model",
    "read_records",
    "summarize",
]
