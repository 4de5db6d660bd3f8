"""The benchmark's model families: the field's CIFAR ResNets, and transformers ResNets and ViTs sized for a CPU."""

from __future__ import annotations

from typing import Any

import torch
from transformers import (
    PreTrainedModel,
    ResNetConfig,
    ResNetForImageClassification,
    ViTConfig,
    ViTForImageClassification,
)

from hf_fst.models import (
    CifarResNetConfig,
    CifarResNetForImageClassification,
    PreActResNetConfig,
    PreActResNetForImageClassification,
)

__all__ = ["ARCHITECTURES", "MODELS", "build_model", "model_class_for"]


ARCHITECTURES: dict[str, dict[str, Any]] = {
    "resnet-s": {"embedding_size": 32, "hidden_sizes": [32, 64, 128, 256], "depths": [1, 1, 1, 1]},
    "resnet-m": {
        "embedding_size": 32, "hidden_sizes": [32, 64, 128, 256], "depths": [1, 1, 1, 1], "layer_type": "basic"
    },
    "resnet-18": {
        "embedding_size": 64, "hidden_sizes": [64, 128, 256, 512], "depths": [2, 2, 2, 2], "layer_type": "basic"
    },
    "vit-s": {"patch_size": 4, "hidden_size": 192, "num_hidden_layers": 6, "num_attention_heads": 3,
              "intermediate_size": 384},
    "vit-t": {"patch_size": 4, "hidden_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4,
              "intermediate_size": 256},
    "preact-resnet-18": {"depths": [2, 2, 2, 2], "width_multiplier": 1.0},
    "preact-resnet-18-w0.25": {"depths": [2, 2, 2, 2], "width_multiplier": 0.25},
    "cifar-resnet-18": {"depths": [2, 2, 2, 2], "width_multiplier": 1.0},
    "cifar-resnet-18-w0.25": {"depths": [2, 2, 2, 2], "width_multiplier": 0.25},
}  # fmt: skip

_CLASSES: dict[str, tuple[type, type[PreTrainedModel]]] = {
    "preact": (PreActResNetConfig, PreActResNetForImageClassification),
    "cifar": (CifarResNetConfig, CifarResNetForImageClassification),
    "vit": (ViTConfig, ViTForImageClassification),
    "resnet": (ResNetConfig, ResNetForImageClassification),
}


MODELS = tuple(ARCHITECTURES)


def build_model(name: str, num_labels: int, image_size: int, seed: int) -> PreTrainedModel:
    """Benchmark architectures, randomly initialised with `seed`.

    - `resnet-s`: HF ResNet, widths 32-64-128-256, one bottleneck block per stage (0.13M parameters); the
      fastest on a CPU, but too small to learn a 0.5% backdoor (see BENCHMARKS.md).
    - `resnet-m`: the same widths with basic blocks (1.2M parameters), about half as fast.
    - `resnet-18`: the ResNet-18 layout (basic blocks, 64-128-256-512, two per stage).
    - `vit-s`: 6 layers, width 192, patch 4.
    - `vit-t`: 4 layers, width 128, patch 4; about 14x cheaper than `vit-s`, for CPU slices.
    - `preact-resnet-18`: BackdoorBench's PreAct-ResNet-18 (11.2M parameters), the field's reference network.
    - `preact-resnet-18-w0.25`: the same layout at a quarter of the width (16-32-64-128, 0.7M parameters), the
      member of that family that reaches the paper's accuracy regime within a CPU budget
      (`benchmarks/cifar_throughput.py` measures the candidates).
    - `cifar-resnet-18`, `cifar-resnet-18-w0.25`: the official FST code's ResNet-18 and its quarter-width member.
    """
    if name not in ARCHITECTURES:
        raise ValueError(f"model={name!r} is not a benchmark model; use one of {', '.join(MODELS)}")
    torch.manual_seed(seed)
    config_class, _ = _CLASSES[_family(name)]
    extra = {} if config_class is ResNetConfig else {"image_size": image_size}
    config = config_class(**extra, **ARCHITECTURES[name])
    config.num_labels = num_labels
    config.id2label = {i: str(i) for i in range(num_labels)}
    config.label2id = {v: k for k, v in config.id2label.items()}
    return model_class_for(name)(config)


def _family(name: str) -> str:
    return name.split("-", 1)[0]


def model_class_for(name: str) -> type[PreTrainedModel]:
    return _CLASSES[_family(name)][1]
