"""Backdoor attacks on image-classification datasets, as `datasets.map` transforms.

    from hf_fst.attacks import get_attack, poison_dataset, backdoor_test_set

    attack = get_attack("badnet", target_label=0)
    train = poison_dataset(ds["train"], attack, poison_rate=0.05, seed=0)
    asr_set = backdoor_test_set(ds["test"], attack)

Registered attacks: `badnet`, `blended`, `sig`, `wanet`, `lc`, `adaptive-blend`, `lf`, `trojannn`. Each config is a dataclass with
the BackdoorBench defaults the FST paper uses and serialises with `to_dict()` / `to_json()`.
"""

from hf_fst.attacks.adaptive_blend import AdaptiveBlendConfig
from hf_fst.attacks.badnet import BadNetConfig
from hf_fst.attacks.base import AttackConfig
from hf_fst.attacks.blended import BlendedConfig
from hf_fst.attacks.lc import LCConfig
from hf_fst.attacks.lf import LFConfig
from hf_fst.attacks.poison import PoisonPlan, backdoor_test_rows, backdoor_test_set, plan_poisoning, poison_dataset
from hf_fst.attacks.registry import ATTACKS, get_attack, list_attacks, register_attack
from hf_fst.attacks.sig import SIGConfig
from hf_fst.attacks.streaming import count_poisoned, poison_iterable_dataset
from hf_fst.attacks.training_time import TriggerCollator
from hf_fst.attacks.trojannn import TrojanNNConfig
from hf_fst.attacks.wanet import WaNetConfig

__all__ = [
    "ATTACKS",
    "AdaptiveBlendConfig",
    "AttackConfig",
    "BadNetConfig",
    "BlendedConfig",
    "LCConfig",
    "LFConfig",
    "PoisonPlan",
    "SIGConfig",
    "TriggerCollator",
    "TrojanNNConfig",
    "WaNetConfig",
    "backdoor_test_rows",
    "backdoor_test_set",
    "count_poisoned",
    "get_attack",
    "list_attacks",
    "plan_poisoning",
    "poison_dataset",
    "poison_iterable_dataset",
    "register_attack",
]
