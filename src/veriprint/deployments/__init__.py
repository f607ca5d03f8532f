"""Deployments: what a serving stack does to a model's numbers, and fingerprints that expect it.

* :mod:`veriprint.deployments.profiles`: device profiles (precision, kernels, batch) a
  fingerprint is made for, and the model each one simulates.
"""
