"""Feature Shift Tuning and its baselines as a `transformers.Trainer`."""

from hf_fst.tuning.config import TUNING_MODES, FSTConfig
from hf_fst.tuning.trainer import FST_STATE_NAME, FSTTrainer

__all__ = ["FST_STATE_NAME", "TUNING_MODES", "FSTConfig", "FSTTrainer"]
