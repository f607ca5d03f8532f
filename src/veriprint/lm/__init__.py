"""Sensitive-Sample fingerprints for causal language models.

One module per concept: :mod:`~veriprint.lm.model` (loading, the zoo's ``fortunes-lm``,
forward passes), :mod:`~veriprint.lm.train` (how the zoo's model is made),
:mod:`~veriprint.lm.prompts` (Eq. 6 on the next-token distribution and the substitution
search), :mod:`~veriprint.lm.noise` (the noise floor), :mod:`~veriprint.lm.specs`
(``top1-token``, ``logprobs:K``, ``text``), :mod:`~veriprint.lm.tamper` (the attacks),
:mod:`~veriprint.lm.target` (the local completions target and greedy decoding),
:mod:`~veriprint.lm.builder` (making a fingerprint), :mod:`~veriprint.lm.plan` (its time
budget), :mod:`~veriprint.lm.reach` (first-order reach per tensor),
:mod:`~veriprint.lm.fingerprint` (the file), :mod:`~veriprint.lm.verify` (the verdict) and
:mod:`~veriprint.lm.anchors` (Logprob Tracking, a statistical test to compare with).
``transformers`` is imported only when a model is loaded.
"""
