"""Tampering: the paper's integrity attacks, the adaptive attacker, and BIVBench's types.

``tamper(model, config, data=...)`` runs the attack registered for ``config`` on a copy of
``model`` and returns a :class:`TamperResult` (the new model and a :class:`TamperReport`).
:func:`list_attacks` lists every attack with its CLI name and defaults.

Attacks, by family (one module each):

* paper (He, Zhang, Lee, CVPR 2019, Section 2.2 and Table 2): ``trojan`` (selective neuron
  retraining), ``poison`` (error-generic / error-specific), ``quantize`` and ``cast``
  (precision reduction), ``prune`` (compression), ``weight-edit`` (arbitrary
  modification), ``adversarial-finetune`` (Table 6);
* BIVBench (ACM MM 2024): ``finetune`` (all or last layers), ``freeze-tune``,
  ``retrain-last``, ``distill``, ``fine-prune``, ``transfer``, ``unlearn``,
  ``class-degrade``, ``clean-label``, ``badnets``;
* subtle: ``weight-noise``, ``bn-recalibrate`` (BatchNorm statistics re-estimated).
"""

from __future__ import annotations

from veriprint._callable import callable_module as _callable_module
from veriprint.tamper.adaptive import AdversarialFineTuneConfig
from veriprint.tamper.backdoor import BadNetsConfig, CleanLabelConfig
from veriprint.tamper.base import (
    AttackInfo,
    TamperReport,
    TamperResult,
    attack_info,
    config_to_dict,
    list_attacks,
    register,
    tamper,
)
from veriprint.tamper.batchnorm import BnRecalibrateConfig
from veriprint.tamper.finetune import (
    DistillConfig,
    FineTuneConfig,
    FreezeTuneConfig,
    RetrainLastConfig,
    TransferConfig,
)
from veriprint.tamper.poisoning import ClassDegradeConfig, PoisonConfig
from veriprint.tamper.precision import CastConfig, QuantizeConfig
from veriprint.tamper.pruning import FinePruneConfig, PruneConfig
from veriprint.tamper.trojan import TrojanConfig
from veriprint.tamper.unlearning import UnlearnConfig
from veriprint.tamper.weights import WeightEditConfig, WeightNoiseConfig

__all__ = [
    "AdversarialFineTuneConfig",
    "AttackInfo",
    "BadNetsConfig",
    "BnRecalibrateConfig",
    "CastConfig",
    "ClassDegradeConfig",
    "CleanLabelConfig",
    "DistillConfig",
    "FinePruneConfig",
    "FineTuneConfig",
    "FreezeTuneConfig",
    "PoisonConfig",
    "PruneConfig",
    "QuantizeConfig",
    "RetrainLastConfig",
    "TamperReport",
    "TamperResult",
    "TransferConfig",
    "TrojanConfig",
    "UnlearnConfig",
    "WeightEditConfig",
    "WeightNoiseConfig",
    "attack_info",
    "config_to_dict",
    "list_attacks",
    "register",
    "tamper",
]


_callable_module(__name__, "tamper")  # ``veriprint.tamper(model, config, data=...)`` runs :func:`tamper`
