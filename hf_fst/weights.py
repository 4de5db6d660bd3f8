"""Refuse pickle-only weights before anything unpickles them.

People purify models they do not trust, and a pickle can run code chosen by whoever wrote it; safetensors cannot.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["ALLOW_PICKLE_FLAG", "FST_STATE_FILE", "PICKLE_WEIGHT_PATTERNS", "check_safe_weights"]

FST_STATE_FILE = "fst_state.safetensors"
"""Where FSTTrainer keeps W0 and ||W0|| in every checkpoint (not model weights, so it never counts as a safe copy)."""


PICKLE_WEIGHT_PATTERNS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")
"""Weight files that `torch.load` / pickle would read: refused unless the user opts in."""


ALLOW_PICKLE_FLAG = "--allow_pickle_weights"


def check_safe_weights(folder: str | os.PathLike, *, allow_pickle: bool = False, arg_name: str = "--model_id") -> None:
    """Refuse a local model or checkpoint folder whose weights exist only in a pickle-based format.

    Unpickling runs code chosen by whoever wrote the file, and people purify models they do not trust; safetensors
    cannot carry code. A folder with no weights at all (config only) passes: nothing would be unpickled.
    """
    path = Path(folder).expanduser()
    if allow_pickle or not path.is_dir() or any(p.name != FST_STATE_FILE for p in path.glob("*.safetensors")):
        return
    pickled = sorted(p.name for pattern in PICKLE_WEIGHT_PATTERNS for p in path.glob(pattern))
    pickled = [name for name in pickled if name not in ("training_args.bin",)]  # Trainer metadata, never loaded
    if pickled:
        raise ValueError(
            f"{arg_name}={str(folder)!r} has weights only in pickle format ({', '.join(pickled[:3])}), which can run "
            f"arbitrary code when loaded; convert them to safetensors, or pass {ALLOW_PICKLE_FLAG} if you trust the file"
        )
