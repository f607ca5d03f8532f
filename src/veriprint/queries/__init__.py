"""Queries a provider can neither replay, recognise nor route around.

The party that answers a verifier's queries is the party that may have swapped the model,
so what the owner sends must not be predictable from what the provider has seen:

* :mod:`.keyed`: randomness derived from the owner's secret and the check's slot (which
  decoys, in which order, split into which requests), reproducible by the owner and
  unpredictable to anyone without the secret;
* :mod:`.fresh`: a check made anew from natural seeds no earlier check used, its expected
  outputs computed by the owner's own copy of the model, so that nothing a provider has
  answered is ever asked again;
* :mod:`.natural`: checks made of natural inputs themselves (their expected outputs from the
  owner's model), which a router cannot tell from user traffic because they are user-like
  traffic; under ``probs`` or ``logits`` they catch small weight changes on their own.

``docs/adversary.md`` measures each against the provider policies of :mod:`veriprint.adversary`.
"""

from __future__ import annotations

from veriprint.queries.keyed import keyed_int, keyed_permutation, keyed_rng, load_secret

__all__ = ["keyed_int", "keyed_permutation", "keyed_rng", "load_secret"]
