"""Running a classifier whatever it is: a transformers model (outputs with `.logits`) or a plain module."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

__all__ = ["logits_of", "model_device"]


def model_device(model: torch.nn.Module, device: str | torch.device | None = None) -> torch.device:
    """`device` when given, else where the model's parameters live (CPU for a model without parameters)."""
    if device is not None:
        return torch.device(device)
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def logits_of(output: Any) -> torch.Tensor:
    """Logits from whatever a classifier returns.

    A transformers output (`.logits`), a mapping with a `"logits"` key, the tuple a transformers model returns
    with `return_dict=False` (logits first when no labels were passed), or a plain module's tensor.
    """
    if isinstance(output, torch.Tensor):
        return output
    if hasattr(output, "logits"):
        return output.logits
    if isinstance(output, Mapping):
        return output["logits"]
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(f"model output of type {type(output).__name__} holds no logits; return a tensor or `.logits`")
