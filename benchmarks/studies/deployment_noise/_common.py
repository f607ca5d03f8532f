"""Deployment noise: the bundle format and what every part shares."""

from __future__ import annotations

BUNDLE_FORMAT = "veriprint.deployment-noise-bundle"
BUNDLE_VERSION = 1
SPECS = ("top1", "probs", "logits")
SETS = ("natural", "fingerprint", "bag")
