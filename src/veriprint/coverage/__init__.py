"""Coverage: which parameters a set of samples sees, and which edits of them it catches.

* :mod:`veriprint.coverage.edits.reach`: per-tensor gradient reach of samples (what the reach
  selector covers, what ``inspect`` shows);
* :mod:`veriprint.coverage.edits.edits`: sweeps of single-parameter edits, which are visible on
  natural inputs and which a fingerprint catches.
"""
