"""Bring BackdoorBench and official-FST checkpoints in as transformers models, without running pickled code.

Both toolkits save with `torch.save`, a pickle. Files are read with `torch.load(weights_only=True)` and an explicit
allowlist of the numpy pieces BackdoorBench's index records hold; anything else a file asks to construct is
refused before it runs. Keys are mapped one to one; a missing, extra or mis-shaped tensor is refused, never
skipped, so an imported model computes exactly what it computed in its own toolkit.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hf_fst.models.configuration import BASE_WIDTHS, CifarResNetConfig, PreActResNetConfig
from hf_fst.models.modeling import CifarResNetForImageClassification, PreActResNetForImageClassification

__all__ = ["ARCHITECTURES", "DATASET_PRESETS", "FORMATS", "build_imported_model", "read_checkpoint"]

FORMATS = ("backdoorbench", "fst")
# Checkpoint architecture name -> (config class, model class); BackdoorBench's `resnet18` is torchvision's ImageNet
# ResNet, a different network, so only `preactresnet18` is taken from its records.
ARCHITECTURES: dict[str, tuple[type, type]] = {
    "preactresnet18": (PreActResNetConfig, PreActResNetForImageClassification),
    "resnet18": (CifarResNetConfig, CifarResNetForImageClassification),
}
# Label names and the input normalisation BackdoorBench applies per data set (GTSRB: none).
DATASET_PRESETS: dict[str, dict[str, Any]] = {
    "cifar10": {
        "labels": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"],
        "mean": [0.4914, 0.4822, 0.4465],
        "std": [0.247, 0.243, 0.261],
    },
    "cifar100": {"labels": None, "num_labels": 100, "mean": [0.5071, 0.4865, 0.4409], "std": [0.2673, 0.2564, 0.2762]},
    "gtsrb": {"labels": [str(i) for i in range(43)], "mean": None, "std": None},
    "tiny": {"labels": None, "num_labels": 200, "mean": [0.4802, 0.4481, 0.3975], "std": [0.2302, 0.2265, 0.2262]},
}


def _numpy_globals() -> list[Any]:
    """What numpy arrays, dtypes and scalars pickle to, under numpy 1.x and 2.x names."""
    try:
        from numpy._core import multiarray
    except ImportError:  # numpy 1.x
        from numpy.core import multiarray

    dtypes = ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64")
    dtypes += ("float16", "float32", "float64", "str", "bytes", "object")
    found: list[Any] = [np.ndarray, np.dtype, *{type(np.dtype(name)) for name in dtypes}]
    for name in ("_reconstruct", "scalar"):
        function = getattr(multiarray, name)
        found += [function, (function, f"numpy.core.multiarray.{name}")]
    return found


def read_checkpoint(path: str | Path, *, arg_name: str = "--checkpoint") -> Any:
    """`torch.load` with `weights_only=True` and the numpy allowlist; a refused global is named in one line."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ValueError(f"{arg_name}={str(path)!r} is not a file; pass an attack_result.pt or a state-dict .pt/.pth")
    try:
        with torch.serialization.safe_globals(_numpy_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises UnpicklingError, RuntimeError, ... for a refused file
        text = " ".join(str(err).split())
        named = re.search(r"[Uu]nsupported (?:global: )?GLOBAL ([\w.]+)", text)
        if named:
            reason = f"it asks to call or construct {named.group(1)}, which is not a tensor, container or numpy array"
        elif "weights only load failed" in text.lower():
            reason = "it holds objects that are not tensors, containers or numpy arrays"
        else:  # not a torch file at all, or a damaged one
            reason = f"it cannot be read as a torch checkpoint ({text[:160]})"
        raise ValueError(
            f"{arg_name}={str(path)!r} was refused without running it: {reason}; only files holding tensors, "
            "numbers, strings and numpy arrays are imported"
        ) from None


def _state_dict(loaded: Any, checkpoint_format: str, arg_name: str) -> tuple[dict[str, torch.Tensor], dict]:
    """The weights (without DataParallel's `module.` prefix) and the record's metadata."""
    meta: dict[str, Any] = {}
    if checkpoint_format == "backdoorbench":
        if not isinstance(loaded, Mapping) or "model" not in loaded or "model_name" not in loaded:
            raise ValueError(
                f"{arg_name}: not a BackdoorBench record (a dict with 'model_name' and 'model'); for a bare state "
                "dict pass --format fst"
            )
        meta = {k: loaded[k] for k in ("model_name", "num_classes", "img_size", "clean_data") if k in loaded}
        weights = loaded["model"]
    else:
        weights = loaded.get("model", loaded) if isinstance(loaded, Mapping) else loaded
    if not isinstance(weights, Mapping) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise ValueError(f"{arg_name}: the weights are not a state dict of tensors")
    return {key.removeprefix("module."): value for key, value in weights.items()}, meta


def _architecture_of(weights: Mapping[str, torch.Tensor], meta: dict, architecture: str | None) -> str:
    """BackdoorBench records name their network; a bare state dict is told apart by the stem's BN (`bn1`)."""
    recorded = meta.get("model_name")
    if recorded is not None:
        if architecture is not None and architecture != recorded:
            raise ValueError(f"--architecture={architecture!r} does not match the record's model_name {recorded!r}")
        if recorded != "preactresnet18":
            raise ValueError(
                f"model_name={recorded!r} cannot be imported from BackdoorBench; supported: preactresnet18"
            )
        return recorded
    name = architecture or ("resnet18" if "bn1.weight" in weights else "preactresnet18")
    if name not in ARCHITECTURES:
        raise ValueError(f"--architecture={name!r} is unknown; use one of {', '.join(ARCHITECTURES)}")
    return name


def _config_from_weights(name: str, weights: Mapping[str, torch.Tensor], num_labels: int, image_size: int):
    """Depths, width and channels read off the tensors' names and shapes."""
    if "conv1.weight" not in weights or "linear.weight" not in weights:
        raise ValueError(f"the weights have no conv1.weight / linear.weight, so they are not a {name}")
    blocks: dict[int, int] = {}
    for key in weights:
        if found := re.match(r"layer(\d+)\.(\d+)\.", key):
            stage, block = int(found.group(1)), int(found.group(2))
            blocks[stage] = max(blocks.get(stage, 0), block + 1)
    depths = [blocks[s] for s in sorted(blocks)]
    if sorted(blocks) != list(range(1, len(blocks) + 1)) or not 1 <= len(depths) <= len(BASE_WIDTHS):
        raise ValueError(f"the weights hold stages {sorted(blocks)}; expected layer1..layerN with N <= 4")
    stem = weights["conv1.weight"]
    config_class, _ = ARCHITECTURES[name]
    return config_class(
        num_channels=int(stem.shape[1]),
        image_size=int(image_size),
        depths=depths,
        width_multiplier=stem.shape[0] / BASE_WIDTHS[0],
        num_labels=num_labels,
    )


def build_imported_model(
    path: str | Path,
    checkpoint_format: str,
    *,
    dataset: str | None = None,
    architecture: str | None = None,
    arg_name: str = "--checkpoint",
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The checkpoint as an `AutoModelForImageClassification` in eval mode, and what the card should say of it."""
    if checkpoint_format not in FORMATS:
        raise ValueError(f"--format={checkpoint_format!r} is unknown; use one of {', '.join(FORMATS)}")
    weights, meta = _state_dict(read_checkpoint(path, arg_name=arg_name), checkpoint_format, arg_name)
    name = _architecture_of(weights, meta, architecture)
    dataset = dataset or meta.get("clean_data")
    if dataset is not None and dataset not in DATASET_PRESETS:
        raise ValueError(f"--dataset={dataset!r} is unknown; use one of {', '.join(DATASET_PRESETS)}")
    preset = DATASET_PRESETS.get(dataset or "", {})
    num_labels = int(weights["linear.weight"].shape[0]) if "linear.weight" in weights else 0
    expected = len(preset["labels"]) if preset.get("labels") else preset.get("num_labels", meta.get("num_classes"))
    if expected is not None and int(expected) != num_labels:
        raise ValueError(f"the head has {num_labels} outputs but {dataset or 'the record'} has {expected} classes")
    image_size = meta.get("img_size", (32, 32))
    image_size = int(image_size[0] if isinstance(image_size, (list, tuple)) else image_size)
    config = _config_from_weights(name, weights, num_labels, image_size)
    labels = preset.get("labels") or [str(i) for i in range(num_labels)]
    config.id2label = dict(enumerate(labels))
    config.label2id = {label: i for i, label in enumerate(labels)}
    _, model_class = ARCHITECTURES[name]
    model = model_class(config)
    prefix = model.base_model_prefix
    mapped = {(key if key.startswith("linear.") else f"{prefix}.{key}"): value for key, value in weights.items()}
    expected_shapes = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    missing = sorted(set(expected_shapes) - set(mapped))
    unexpected = sorted(set(mapped) - set(expected_shapes))
    wrong = sorted(k for k in set(mapped) & set(expected_shapes) if tuple(mapped[k].shape) != expected_shapes[k])
    if missing or unexpected or wrong:
        parts = [f"{len(items)} {what} (e.g. {items[0]})" for what, items in
                 (("missing", missing), ("unexpected", unexpected), ("mis-shaped", wrong)) if items]  # fmt: skip
        raise ValueError(f"{arg_name}: the weights do not fit a {name}: {'; '.join(parts)}")
    model.load_state_dict(mapped, strict=True)
    model.eval()
    digest = hashlib.sha256(Path(path).expanduser().read_bytes()).hexdigest()
    source = {"file": Path(path).name, "sha256": digest, "format": checkpoint_format, "architecture": name}
    source.update({"dataset": dataset, "mean": preset.get("mean"), "std": preset.get("std"), **meta})
    return model, source
