"""The field's CIFAR networks as transformers models: BackdoorBench's PreAct-ResNet and the FST code's ResNet.

Both keep the 32x32 input at full resolution in the first stage (3x3 stride-1 stem, no max-pool), unlike
transformers' ImageNet ResNet, and both name their head `linear`, as the checkpoints of those toolkits do. Module
names below the backbone prefix match those checkpoints' state-dict keys, so importing one is a prefix change.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPoolingAndNoAttention, ImageClassifierOutput

from hf_fst.models.configuration import CifarResNetConfig, PreActResNetConfig

__all__ = [
    "CifarResNetForImageClassification",
    "CifarResNetModel",
    "PreActResNetForImageClassification",
    "PreActResNetModel",
]


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-conv3x3; a changed shape takes a 1x1 conv of the pre-activated input as shortcut."""

    def __init__(self, in_channels: int, channels: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = _conv3x3(in_channels, channels, stride)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv2 = _conv3x3(channels, channels)
        if stride != 1 or in_channels != channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, channels, kernel_size=1, stride=stride, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if hasattr(self, "shortcut") else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class BasicBlock(nn.Module):
    """conv-BN-ReLU-conv-BN plus the shortcut (1x1 conv + BN where the shape changes), ReLU after the sum."""

    def __init__(self, in_channels: int, channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_channels, channels, stride)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = _conv3x3(channels, channels)
        self.bn2 = nn.BatchNorm2d(channels)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_channels != channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, channels, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


def _stages(config, block: type[nn.Module], in_channels: int) -> list[nn.Sequential]:
    """`layer1..layerN`: the first block of each stage after the first halves the resolution."""
    stages = []
    for index, (depth, channels) in enumerate(zip(config.depths, config.hidden_sizes, strict=True)):
        strides = [1 if index == 0 else 2] + [1] * (depth - 1)
        blocks = []
        for stride in strides:
            blocks.append(block(in_channels, channels, stride))
            in_channels = channels
        stages.append(nn.Sequential(*blocks))
    return stages


class _CifarPreTrainedModel(PreTrainedModel):
    main_input_name = "pixel_values"
    input_modalities = ("image",)

    def _init_weights(self, module: nn.Module) -> None:
        """PyTorch's default initialisation of each layer, which both toolkits train from."""
        super()._init_weights(module)
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            if module.bias is not None:
                fan_in, _ = torch.nn.init._calculate_fan_in_and_fan_out(module.weight)
                bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
                init.uniform_(module.bias, -bound, bound)
        elif isinstance(module, nn.BatchNorm2d):
            init.ones_(module.weight)
            init.zeros_(module.bias)
            init.zeros_(module.running_mean)
            init.ones_(module.running_var)
            init.zeros_(module.num_batches_tracked)


class _Backbone(_CifarPreTrainedModel):
    """Stem, stages, global average pool; returns the pooled features the head reads."""

    def _layers(self) -> list[nn.Module]:
        return [getattr(self, f"layer{i + 1}") for i in range(len(self.config.depths))]

    def forward(
        self, pixel_values: torch.Tensor, output_hidden_states: bool | None = None, return_dict: bool | None = None
    ) -> BaseModelOutputWithPoolingAndNoAttention | tuple:
        hidden = self.stem(pixel_values)
        states = [hidden]
        for layer in self._layers():
            hidden = layer(hidden)
            states.append(hidden)
        pooled = self.pool(hidden).flatten(1)
        keep = output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        if return_dict is False:
            return (hidden, pooled, tuple(states)) if keep else (hidden, pooled)
        return BaseModelOutputWithPoolingAndNoAttention(
            last_hidden_state=hidden, pooler_output=pooled, hidden_states=tuple(states) if keep else None
        )


class PreActResNetPreTrainedModel(_CifarPreTrainedModel):
    config_class = PreActResNetConfig
    base_model_prefix = "preact_resnet"


class PreActResNetModel(PreActResNetPreTrainedModel, _Backbone):
    """BackdoorBench's layout: `conv1` (no BN), `layer1..4`, no final BN or ReLU."""

    def __init__(self, config: PreActResNetConfig) -> None:
        super().__init__(config)
        width = config.hidden_sizes[0]
        self.conv1 = _conv3x3(config.num_channels, width)
        for index, stage in enumerate(_stages(config, PreActBlock, width)):
            self.add_module(f"layer{index + 1}", stage)
        self.post_init()

    def stem(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.conv1(pixel_values)

    def pool(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(hidden, 1)  # BackdoorBench's AdaptiveAvgPool2d, bit for bit


class CifarResNetPreTrainedModel(_CifarPreTrainedModel):
    config_class = CifarResNetConfig
    base_model_prefix = "cifar_resnet"


class CifarResNetModel(CifarResNetPreTrainedModel, _Backbone):
    """The official FST code's layout: `conv1` + `bn1` + ReLU, `layer1..4` of basic blocks."""

    def __init__(self, config: CifarResNetConfig) -> None:
        super().__init__(config)
        width = config.hidden_sizes[0]
        self.conv1 = _conv3x3(config.num_channels, width)
        self.bn1 = nn.BatchNorm2d(width)
        for index, stage in enumerate(_stages(config, BasicBlock, width)):
            self.add_module(f"layer{index + 1}", stage)
        self.post_init()

    def stem(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn1(self.conv1(pixel_values)))

    def pool(self, hidden: torch.Tensor) -> torch.Tensor:
        # The original's 4x4 average pool (at 32x32 the last map is 4x4), over the whole map at any input size.
        return F.avg_pool2d(hidden, tuple(hidden.shape[-2:]))


class _Classifier:
    """Backbone + `linear` head; cross-entropy when `labels` are given."""

    def _build(self, config, backbone: nn.Module) -> None:
        self.num_labels = config.num_labels
        setattr(self, self.base_model_prefix, backbone)
        self.linear = nn.Linear(config.hidden_sizes[-1], config.num_labels)
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> ImageClassifierOutput | tuple:
        outputs = getattr(self, self.base_model_prefix)(pixel_values, output_hidden_states=output_hidden_states)
        logits = self.linear(outputs.pooler_output)
        loss = None if labels is None else F.cross_entropy(logits, labels.to(logits.device))
        if return_dict is False:
            head = (logits, outputs.hidden_states) if outputs.hidden_states is not None else (logits,)
            return ((loss,) + head) if loss is not None else head
        return ImageClassifierOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states)


class PreActResNetForImageClassification(_Classifier, PreActResNetPreTrainedModel):
    def __init__(self, config: PreActResNetConfig) -> None:
        super().__init__(config)
        self._build(config, PreActResNetModel(config))


class CifarResNetForImageClassification(_Classifier, CifarResNetPreTrainedModel):
    def __init__(self, config: CifarResNetConfig) -> None:
        super().__init__(config)
        self._build(config, CifarResNetModel(config))
