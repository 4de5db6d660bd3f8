"""Running a classifier whatever it is: a transformers model (outputs with `.logits`) or a plain module."""

from __future__ import annotations

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
    """Logits from a transformers output or a plain module's tensor."""
    return output.logits if hasattr(output, "logits") else output
