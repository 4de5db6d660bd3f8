"""Registry of the attacks: `get_attack("badnet", target_label=3)` returns a config with the paper defaults."""

from __future__ import annotations

import dataclasses
from typing import Any

from hf_fst.attacks.adaptive_blend import AdaptiveBlendConfig
from hf_fst.attacks.badnet import BadNetConfig
from hf_fst.attacks.base import AttackConfig
from hf_fst.attacks.blended import BlendedConfig
from hf_fst.attacks.lc import LCConfig
from hf_fst.attacks.lf import LFConfig
from hf_fst.attacks.sig import SIGConfig
from hf_fst.attacks.trojannn import TrojanNNConfig
from hf_fst.attacks.wanet import WaNetConfig

__all__ = ["ATTACKS", "get_attack", "list_attacks", "register_attack"]

ATTACKS: dict[str, type[AttackConfig]] = {}
_ALIASES = {
    "badnets": "badnet",
    "blend": "blended",
    "label-consistent": "lc",
    "adaptiveblend": "adaptive-blend",
    "low-frequency": "lf",
    "trojan-nn": "trojannn",
}


def _normalize(name: str) -> str:
    key = str(name).strip().lower().replace("_", "-").replace(" ", "-")
    return _ALIASES.get(key, key)


def register_attack(config_class: type[AttackConfig]) -> type[AttackConfig]:
    """Add an `AttackConfig` subclass to the registry under its `name` (usable as a class decorator)."""
    if not (isinstance(config_class, type) and issubclass(config_class, AttackConfig)):
        raise ValueError(f"config_class={config_class!r}: expected an AttackConfig subclass")
    ATTACKS[_normalize(config_class.name)] = config_class
    return config_class


for _cls in (
    BadNetConfig,
    BlendedConfig,
    SIGConfig,
    WaNetConfig,
    LCConfig,
    AdaptiveBlendConfig,
    LFConfig,
    TrojanNNConfig,
):
    register_attack(_cls)


def list_attacks() -> list[str]:
    """Registered attack names, in registration order."""
    return list(ATTACKS)


def get_attack(name: str | AttackConfig, **params: Any) -> AttackConfig:
    """Build the config of attack `name` (case, `_` and `-` are ignored) with `params` overriding the defaults.

    A config passed as `name` is returned as is, or as a copy with `params` replaced.
    """
    if isinstance(name, AttackConfig):
        return dataclasses.replace(name, **params) if params else name
    key = _normalize(name)
    if key not in ATTACKS:
        raise ValueError(f"name={name!r}: unknown attack; registered attacks are {list_attacks()}")
    config_class = ATTACKS[key]
    known = {f.name for f in dataclasses.fields(config_class)}
    unknown = sorted(set(params) - known)
    if unknown:
        raise ValueError(f"{unknown} are not parameters of attack {key!r}; its parameters are {sorted(known)}")
    return config_class(**params)
