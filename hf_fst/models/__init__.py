"""The field's CIFAR architectures, registered with transformers' Auto classes when `hf_fst` is imported.

    import hf_fst  # registers the architectures
    model = AutoModelForImageClassification.from_pretrained("path/to/imported-or-trained")

No `trust_remote_code` is needed: the classes live in this package.
"""

from transformers import AutoConfig, AutoModel, AutoModelForImageClassification

from hf_fst.models.configuration import CifarResNetConfig, PreActResNetConfig
from hf_fst.models.modeling import (
    CifarResNetForImageClassification,
    CifarResNetModel,
    PreActResNetForImageClassification,
    PreActResNetModel,
)

__all__ = [
    "CifarResNetConfig",
    "CifarResNetForImageClassification",
    "CifarResNetModel",
    "PreActResNetConfig",
    "PreActResNetForImageClassification",
    "PreActResNetModel",
]

for _config, _base, _classifier in (
    (PreActResNetConfig, PreActResNetModel, PreActResNetForImageClassification),
    (CifarResNetConfig, CifarResNetModel, CifarResNetForImageClassification),
):
    AutoConfig.register(_config.model_type, _config, exist_ok=True)
    AutoModel.register(_config, _base, exist_ok=True)
    AutoModelForImageClassification.register(_config, _classifier, exist_ok=True)
