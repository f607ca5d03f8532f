"""Checking: a fingerprint's samples sent to a target and the answers compared.

* :mod:`veriprint.verification.verify`: :func:`verify` and the verdict rules;
* :mod:`veriprint.verification.send`: the query loop (every sample sent once through a
  target, each answer held to the output contract), shared with enrollment;
* :mod:`veriprint.verification.specs`: what a target's answer is compared as (``top1``,
  ``topk:K``, ``probs``, ``logits``);
* :mod:`veriprint.verification.queries`: what is sent besides the samples when the provider
  may be watching (fresh samples, keyed order, split queries).

The targets themselves are in :mod:`veriprint.targets`.
"""
