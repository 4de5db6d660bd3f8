"""Find, re-initialise and project the linear classification head of an image classifier.

FST works on the last linear layer only: it remembers its weight W0, re-initialises it, and keeps
its Frobenius norm at ||W0||. Every `AutoModelForImageClassification` puts that layer somewhere
else (`classifier`, `classifier.1`, `fc`, `head`, `classifier.linear`, ...), so the lookup here is
structural rather than a list of names: the head is the `nn.Linear` outside the backbone whose
output size is the number of labels.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["find_linear_head", "reinitialize_linear_", "project_weight_norm_"]

# Names that mark a module as a classification head when the structure alone is not enough
# (plain `nn.Module`s without a `base_model_prefix`, or several candidates of the right size).
_HEAD_WORDS = ("classifier", "fc", "head", "heads", "score", "logits", "cls", "linear", "output", "out")

_HOW_TO_FIX = "pass head_name='<dotted.path>' (FSTConfig.head_name / --head_name) naming the nn.Linear to use"


def _num_labels(model: nn.Module) -> int | None:
    config = getattr(model, "config", None)
    num_labels = getattr(config, "num_labels", None)
    return int(num_labels) if num_labels else None


def _backbone_prefix(model: nn.Module) -> str | None:
    """Dotted name of the backbone in a transformers model (`resnet`, `vit`, ...), if any.

    Found by identity rather than taken from `base_model_prefix`, because a PEFT wrapper forwards that attribute
    from the model it wraps while the module names gain a `base_model.model.` prefix.
    """
    prefix = getattr(model, "base_model_prefix", None)
    backbone = getattr(model, prefix, None) if prefix else None
    if not isinstance(backbone, nn.Module):
        return None
    return next((name for name, module in model.named_modules() if module is backbone and name), None)


def _inactive_copies(model: nn.Module) -> list[str]:
    """Dotted names of head copies that never see a gradient inside PEFT `modules_to_save` wrappers.

    PEFT keeps the frozen `original_module` next to one trainable copy per adapter; only the active adapter's copy
    is the head that trains.
    """
    skipped = []
    for name, module in model.named_modules():
        copies = getattr(module, "modules_to_save", None)
        if not isinstance(copies, nn.ModuleDict) or not hasattr(module, "original_module"):
            continue
        active = getattr(module, "active_adapters", None) or [getattr(module, "active_adapter", None)]
        prefix = f"{name}." if name else ""
        skipped.append(f"{prefix}original_module")
        skipped.extend(f"{prefix}modules_to_save.{key}" for key in copies if key not in active)
    return skipped


def _resolve_named_head(model: nn.Module, head_name: str) -> tuple[str, nn.Linear]:
    try:
        module = model.get_submodule(head_name)
    except AttributeError:
        raise ValueError(
            f"head_name={head_name!r} is not a submodule of {type(model).__name__}; "
            f"pass the dotted path of its final nn.Linear (e.g. 'classifier' or 'classifier.1')"
        ) from None
    if isinstance(module, nn.Linear):
        return head_name, module
    linears = [(f"{head_name}.{n}", m) for n, m in module.named_modules() if isinstance(m, nn.Linear)]
    if len(linears) == 1:
        return linears[0]
    raise ValueError(
        f"head_name={head_name!r} is a {type(module).__name__} holding {len(linears)} nn.Linear layers; "
        f"pass head_name pointing at exactly one nn.Linear"
    )


def find_linear_head(model: nn.Module, head_name: str | None = None) -> tuple[str, nn.Linear]:
    """Return `(dotted_name, module)` of the model's linear classification head.

    With `head_name` the named module is used (a container holding exactly one `nn.Linear`, such
    as ResNet's `Sequential(Flatten, Linear)`, resolves to that layer). Without it the head is the
    unique `nn.Linear` outside the backbone whose `out_features` equals `config.num_labels`. In a PEFT
    model whose head is listed in `modules_to_save`, that is the active adapter's trainable copy.

    Raises:
        ValueError: no such layer, or more than one (e.g. DeiT with a distillation head); the
            message says how to pick one with `head_name`.
    """
    if head_name:
        return _resolve_named_head(model, head_name)

    excluded = _inactive_copies(model)
    backbone = _backbone_prefix(model)
    if backbone:
        excluded.append(backbone)
    candidates = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and not any(name == e or name.startswith(e + ".") for e in excluded)
    ]
    num_labels = _num_labels(model)
    if num_labels is not None:
        candidates = [(n, m) for n, m in candidates if m.out_features == num_labels]
    if len(candidates) > 1:
        named = [(n, m) for n, m in candidates if any(w in n.lower().split(".")[-2:] for w in _HEAD_WORDS)]
        candidates = named or candidates
    if len(candidates) == 1:
        return candidates[0]
    model_name = type(model).__name__
    if not candidates:
        size = f" with out_features={num_labels}" if num_labels is not None else ""
        raise ValueError(f"{model_name} has no linear classification head{size}; {_HOW_TO_FIX}")
    names = ", ".join(n for n, _ in candidates)
    raise ValueError(f"{model_name} has several candidate heads ({names}); {_HOW_TO_FIX}")


@torch.no_grad()
def reinitialize_linear_(layer: nn.Linear, generator: torch.Generator | None = None) -> None:
    """Re-draw weight and bias from U(-1/sqrt(fan_in), 1/sqrt(fan_in)), as a fresh `nn.Linear` would.

    Done by hand rather than through `model._init_weights`, which transformers 5.x skips for
    weights loaded by `from_pretrained`; the optional generator makes the draw reproducible
    without touching the global RNG that the Trainer seeds and checkpoints.
    """
    bound = 1.0 / math.sqrt(layer.in_features)
    # Draw on the CPU so the same generator gives the same head on every device.
    weight = torch.empty(layer.weight.shape, dtype=torch.float32).uniform_(-bound, bound, generator=generator)
    layer.weight.copy_(weight)
    if layer.bias is not None:
        bias = torch.empty(layer.bias.shape, dtype=torch.float32).uniform_(-bound, bound, generator=generator)
        layer.bias.copy_(bias)


@torch.no_grad()
def project_weight_norm_(weight: torch.Tensor, target_norm: torch.Tensor | float) -> None:
    """Rescale `weight` in place so that its Frobenius norm equals `target_norm`.

    The norm and the scale are computed in float32 whatever the weight's dtype: in bfloat16 the norm of a large
    head is off by up to ~0.4%, which would drift the head off the ||W0|| sphere step after step.
    """
    norm = weight.float().norm()
    target = torch.as_tensor(target_norm, dtype=torch.float32, device=weight.device)
    # A zero weight is left alone; torch.where instead of `if` keeps this free of a host-device sync.
    scale = torch.where(norm > 0, target / norm.clamp_min(torch.finfo(torch.float32).tiny), torch.ones_like(norm))
    if weight.dtype == torch.float32:
        weight.mul_(scale)
    else:
        weight.copy_((weight.float() * scale).to(weight.dtype))
