"""What a command prints: progress bars and log levels, switched for hf-fst and the libraries it drives at once.

Long phases (poisoning, decoding, training, evaluation) show a tqdm bar, as the Trainer does; `--disable_tqdm true`
turns them all off (ours, the Trainer's, datasets' and huggingface_hub's), for logs that go to a file.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any, TypeVar

from tqdm.auto import tqdm

__all__ = ["configure_console", "progress", "progress_enabled", "set_progress_bars"]

T = TypeVar("T")
_ENABLED = [True]


def set_progress_bars(enabled: bool) -> None:
    """Show or hide the bars of hf-fst, datasets, huggingface_hub and transformers' downloads."""
    import datasets
    import huggingface_hub.utils
    import transformers

    _ENABLED[0] = bool(enabled)
    if enabled:  # an environment variable that hides a library's bars keeps priority, as that library documents
        if not datasets.config.HF_DATASETS_DISABLE_PROGRESS_BARS:
            datasets.enable_progress_bars()
        if not huggingface_hub.constants.HF_HUB_DISABLE_PROGRESS_BARS:
            huggingface_hub.utils.enable_progress_bars()
        transformers.utils.logging.enable_progress_bar()
    else:
        datasets.disable_progress_bars()
        huggingface_hub.utils.disable_progress_bars()
        transformers.utils.logging.disable_progress_bar()


def progress_enabled() -> bool:
    return _ENABLED[0]


def progress(iterable: Iterable[T] | None = None, **kwargs: Any) -> tqdm:
    """A tqdm bar that `set_progress_bars(False)` hides (`leave=False` unless given: finished phases step aside)."""
    kwargs.setdefault("leave", False)
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, disable=not _ENABLED[0], **kwargs)


_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR,
           "critical": logging.CRITICAL}  # fmt: skip


def configure_console(*, disable_tqdm: bool = False, log_level: str | None = None) -> None:
    """Apply a command's `--disable_tqdm` and `--log_level` to hf-fst, transformers and datasets.

    `passive` (the TrainingArguments default) keeps hf-fst's progress lines at INFO and the libraries at WARNING.
    """
    import datasets
    import transformers

    set_progress_bars(not disable_tqdm)
    name = str(getattr(log_level, "value", log_level) or "passive").lower()
    if name not in _LEVELS and name != "passive":
        raise ValueError(f"--log_level={log_level!r} is not a level; use one of passive, {', '.join(_LEVELS)}")
    logging.getLogger("hf_fst").setLevel(_LEVELS.get(name, logging.INFO))
    library_level = _LEVELS.get(name, logging.WARNING)
    transformers.utils.logging.set_verbosity(library_level)
    datasets.utils.logging.set_verbosity(library_level)
