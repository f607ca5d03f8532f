"""The provider as adversary: routers that answer checks honestly and users from a tampered copy.

:class:`Provider` is a local target holding an intact and a served (tampered) copy and a
:class:`Policy`; each policy is one module:

* :mod:`.replay`: answers inputs seen while honest as it did then;
* :mod:`.near_duplicate`: routes inputs within ``eps`` of another (request or kept traffic);
* :mod:`.margin`: routes inputs on which the served copy's margin or confidence is small;
* :mod:`.squeeze`: feature squeezing (Xu et al., NDSS 2018);
* :mod:`.learned`: a detector trained on veriprint's own samples against natural inputs;
* :mod:`.partial`: the tampered copy answers only a share of requests.

:func:`routed_share` measures a policy's cost (the share of natural traffic it answers
honestly), :func:`calibrate` sets a detector's threshold to a flag rate, and :mod:`.roc`
gives each detector's ROC on the owner's queries against natural inputs. ``python -m
benchmarks.studies.adversary`` measures every policy against every way of checking
(``docs/design/adversary.md``).
"""

from __future__ import annotations

from veriprint.adversary.base import (
    Policy,
    PolicyInfo,
    Provider,
    calibrate,
    list_policies,
    make_policy,
    margins,
    register_policy,
    routed_share,
    served_logits,
    softmax,
)
from veriprint.adversary.learned import LearnedDetector
from veriprint.adversary.margin import ConfidencePolicy, MarginPolicy
from veriprint.adversary.near_duplicate import NearDuplicatePolicy
from veriprint.adversary.partial import PartialRouting
from veriprint.adversary.replay import ReplayPolicy
from veriprint.adversary.squeeze import FeatureSqueezing

__all__ = [
    "ConfidencePolicy",
    "FeatureSqueezing",
    "LearnedDetector",
    "MarginPolicy",
    "NearDuplicatePolicy",
    "PartialRouting",
    "Policy",
    "PolicyInfo",
    "Provider",
    "ReplayPolicy",
    "calibrate",
    "list_policies",
    "make_policy",
    "margins",
    "register_policy",
    "routed_share",
    "served_logits",
    "softmax",
]
