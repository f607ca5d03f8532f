"""Queries a provider can neither replay, recognise nor route around.

The party that answers a verifier's queries is the party that may have swapped the model,
so what the owner sends must not be predictable from what the provider has seen:

* :mod:`.keyed`: randomness derived from the owner's secret and the check's slot (which
  decoys, in which order, split into which requests), reproducible by the owner and
  unpredictable to anyone without the secret;
* :mod:`.split`: a check's samples as several requests of keyed sizes, twin halves apart;
* :mod:`.source`: what the monitor asks of a source of checks made anew for each check;
* :mod:`.fresh`: such a source: each check made from natural seeds no earlier check used,
  its expected outputs computed by the owner's own copy of the model, so that nothing a
  provider has answered is ever asked again. Its ``natural`` kind sends the natural inputs
  themselves, which a router cannot tell from user traffic because they are user traffic;
  under ``probs`` or ``logits`` they catch small weight changes on their own.

``docs/design/adversary.md`` measures each against the provider policies of :mod:`veriprint.adversary`.
"""

from __future__ import annotations

from veriprint.verification.queries.keyed import (
    keyed_int,
    keyed_permutation,
    keyed_rng,
    load_secret,
)

__all__ = ["keyed_int", "keyed_permutation", "keyed_rng", "load_secret"]
