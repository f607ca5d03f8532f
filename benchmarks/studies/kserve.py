"""False alarms and detection through a real KServe ModelServer, over REST and gRPC.

    bash scripts/setup-kserve.sh
    .venv/bin/python -m benchmarks.studies.kserve --checks 300 --out /tmp/kserve.json

KServe (``kserve.ModelServer`` with a custom ``kserve.Model`` over onnxruntime, one intra-op
thread) serves ONNX exports of the demo's shipped Fashion-MNIST CNN and of its six tampered
copies (:func:`veriprint.demo.tampered_copies`, every one an attack of the tampering
registry). With the shipped fingerprint it runs ``--checks`` checks of the intact model per
protocol, cycling through the specs ``top1``, ``probs`` and ``logits`` and requests of the
whole fingerprint, 1 and 3 samples; each check is a fresh ``verify`` (metadata request
included). Every verdict that is not INTACT is a false alarm. Then every tampered copy is
checked once per spec and protocol; a verdict that is not TAMPERED is a miss. It also
reports how far the served answers to the fingerprint's samples are from PyTorch's, against
the fingerprint's tolerances. Exit status 1 on any false alarm or miss.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from testkit.servers.demo_onnx import NAMES, DemoModels, demo_models
from testkit.servers.kserve import KServe
from veriprint.fingerprint import Fingerprint
from veriprint.numerics import softmax_np
from veriprint.targets import QueryBatch, open_target
from veriprint.verification.verify import verify

PROTOCOLS = ("rest", "grpc")
SPECS = ("top1", "probs", "logits")
BATCHES = (None, 1, 3)


@dataclass
class ProtocolResult:
    """What one protocol gave: checks of the intact model, then of every tampered copy."""

    protocol: str
    checks: int = 0
    false_alarms: list[dict[str, Any]] = field(default_factory=list)
    check_ms: list[float] = field(default_factory=list)
    tamper_checks: int = 0
    misses: list[dict[str, Any]] = field(default_factory=list)
    mismatches: dict[str, dict[str, int]] = field(default_factory=dict)  # tamper -> spec -> samples
    max_logit_diff: float = 0.0
    max_prob_diff: float = 0.0


def url(server: KServe, protocol: str, name: str) -> str:
    return server.url(name) if protocol == "rest" else server.grpc_url(name)


def run(server: KServe, models: DemoModels, checks: int) -> list[ProtocolResult]:
    """``checks`` checks of the intact model and one of every tampered copy per spec, per protocol."""
    fp = Fingerprint.load(models.fingerprint)
    with torch.inference_mode():
        ref = models.model(fp.samples).double().numpy()
    results = []
    for protocol in PROTOCOLS:
        res = ProtocolResult(protocol)
        got = open_target(url(server, protocol, "cnn")).query(QueryBatch(fp.samples.numpy())).astype(np.float64)
        res.max_logit_diff = float(np.abs(got - ref).max())
        res.max_prob_diff = float(np.abs(softmax_np(got) - softmax_np(ref)).max())
        for i, (spec, batch) in zip(range(checks), itertools.cycle(itertools.product(SPECS, BATCHES)),
                                    strict=False):
            t0 = time.perf_counter()
            r = verify(fp, url(server, protocol, "cnn"), spec=spec, max_batch=batch)
            res.check_ms.append(1000 * (time.perf_counter() - t0))
            res.checks += 1
            if r.verdict != "INTACT":
                res.false_alarms.append({"check": i, "spec": spec, "max_batch": batch, "verdict": r.verdict,
                                         "reason": r.reason})
        for name in NAMES[1:]:
            for spec in SPECS:
                r = verify(fp, url(server, protocol, name), spec=spec)
                res.tamper_checks += 1
                res.mismatches.setdefault(models.labels[name], {})[spec] = r.mismatches
                if r.verdict != "TAMPERED":
                    res.misses.append({"tamper": models.labels[name], "spec": spec, "verdict": r.verdict,
                                       "reason": r.reason})
        results.append(res)
    return results


def report(results: list[ProtocolResult], fp: Fingerprint) -> str:
    """The results as Markdown: one table of the intact checks, one of the tampered copies."""
    lines = ["| protocol | checks of the intact model | false alarms | median ms per check | "
             "max abs logit diff vs torch | max abs prob diff |", "|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r.protocol} | {r.checks} | {len(r.false_alarms)} | {statistics.median(r.check_ms):.1f} | "
                     f"{r.max_logit_diff:.2e} | {r.max_prob_diff:.2e} |")
    noise = fp.noise
    lines += ["", f"Tolerances of the fingerprint: logits {noise.logit_tolerance:.3g}, probabilities "
              f"{noise.prob_tolerance:.3g}, margin floor {noise.floor:.3g}.", "",
              "| tampered copy | " + " | ".join(f"{r.protocol} {s}" for r in results for s in SPECS) + " |",
              "|---|" + "---|" * (len(results) * len(SPECS))]
    for label in results[0].mismatches:
        cells = []
        for r in results:
            for s in SPECS:
                miss = any(m["tamper"] == label and m["spec"] == s for m in r.misses)
                cells.append(("missed" if miss else "TAMPERED") + f" ({r.mismatches[label][s]} / {len(fp)})")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checks", type=int, default=300, help="checks of the intact model per protocol")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    if args.checks < 1:
        p.error(f"expected --checks >= 1, got {args.checks}")
    models = demo_models()
    fp = Fingerprint.load(models.fingerprint)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as d, KServe(Path(d), models.onnx) as server:
        results = run(server, models, args.checks)
    print(report(results, fp))
    alarms = sum(len(r.false_alarms) for r in results)
    misses = sum(len(r.misses) for r in results)
    print(f"\n{sum(r.checks for r in results)} checks of the intact model, {alarms} false alarms; "
          f"{sum(r.tamper_checks for r in results)} checks of tampered copies, {misses} missed; "
          f"{time.perf_counter() - t0:.0f} s")
    for a in [*[a for r in results for a in r.false_alarms], *[m for r in results for m in r.misses]]:
        print(f"  {a}")
    if args.out:
        Path(args.out).write_text(json.dumps([asdict(r) for r in results], indent=1))
    return 1 if alarms or misses else 0


if __name__ == "__main__":
    raise SystemExit(main())
