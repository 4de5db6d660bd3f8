"""The error type the recipes turn into a one-line message and exit status 2, and the one-line formatter."""

from __future__ import annotations

__all__ = ["ConfigurationError", "one_line"]


class ConfigurationError(ValueError):
    """Bad input found before any training: the recipes print its one-line message and exit with status 2."""


def one_line(err: BaseException, limit: int = 200) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
