"""False alarms and detection through a real NVIDIA Triton server (PyTriton, on the CPU).

    bash scripts/setup-triton.sh
    .venv/bin/python -m benchmarks.studies.triton --checks 1000 --out /tmp/triton.json

The demo's shipped CNN and fingerprint, served as ONNX by Triton (``testkit/servers/triton.py``)
with its tampered copies (the demo table's attacks). For each protocol (REST JSON and
gRPC), ``--checks`` verifications of the intact model, cycling through the specs ``top1``,
``probs`` and ``logits`` and requests of 1, 2, 3, 4, 8 samples or the whole fingerprint,
sent by ``--clients`` concurrent clients so that Triton's dynamic batcher can merge requests
of different checks into one model call. A check of the intact model that is not INTACT
is counted (TAMPERED: a false alarm; INCONCLUSIVE: a failed check). Then every tampered
copy is verified under ``top1`` and ``probs`` through both protocols. Exit status 1 if a
check of the intact model was not INTACT or a tampered copy was not TAMPERED.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from torch import nn

from testkit.servers.triton import TritonServer, demo_models
from veriprint.fingerprint import Fingerprint
from veriprint.targets import QueryBatch, Target, TorchTarget
from veriprint.targets.oip import OipTarget
from veriprint.targets.oip_grpc import GrpcOipTarget
from veriprint.verification.verify import verify

SPECS = ("top1", "probs", "logits")
BATCHES: tuple[int | None, ...] = (None, 1, 2, 3, 4, 8)
PROTOCOLS = ("rest", "grpc")


@dataclass
class ProtocolResult:
    """One protocol's counts: checks of the intact model by verdict, tampered copies caught."""

    protocol: str
    checks: int = 0
    verdicts: dict[str, int] = field(default_factory=dict)
    false_alarms: int = 0
    failed: list[str] = field(default_factory=list)  # reasons of checks that were not INTACT (first 5)
    seconds: float = 0.0
    tampered_checks: int = 0
    caught: int = 0
    missed: list[str] = field(default_factory=list)  # "label / spec: verdict" of tampered copies not caught
    flips: dict[str, int] = field(default_factory=dict)  # "label / spec" -> mismatches
    max_logit_diff: float | None = None  # served vs local torch, the fingerprint's samples, every batch size


def _url(server: TritonServer, protocol: str, name: str) -> str:
    return server.url(name) if protocol == "rest" else server.grpc_url(name)


def _target(protocol: str, url: str, max_batch: int | None) -> Target:
    return OipTarget(url, max_batch=max_batch) if protocol == "rest" else GrpcOipTarget(url, max_batch=max_batch)


def measure(server: TritonServer, fingerprint: Fingerprint, labels: dict[str, str], *, checks: int,
            clients: int = 2, model: nn.Module | None = None) -> list[ProtocolResult]:
    """Run the checks on a started ``server`` serving ``fashion-cnn`` and the copies in ``labels``;
    with the intact ``model``, also the largest logit difference between it and the server."""
    results = []
    q = QueryBatch(fingerprint.samples.numpy())
    local = None if model is None else TorchTarget(model).query(q)
    for protocol in PROTOCOLS:
        res = ProtocolResult(protocol)
        url = _url(server, protocol, "fashion-cnn")
        if local is not None:
            res.max_logit_diff = max(float(np.abs(_target(protocol, url, b).query(q) - local).max())
                                     for b in BATCHES)
        plan = list(itertools.islice(itertools.cycle(itertools.product(SPECS, BATCHES)), checks))

        def one(job: tuple[str, int | None], url: str = url) -> tuple[str, str]:
            spec, max_batch = job
            r = verify(fingerprint, url, spec=spec, max_batch=max_batch)
            return r.verdict, f"{spec} max_batch={max_batch}: {r.reason}"

        start = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            outcomes = list(pool.map(one, plan))
        res.seconds = time.perf_counter() - start
        counts = Counter(v for v, _ in outcomes)
        res.checks = len(outcomes)
        res.verdicts = dict(sorted(counts.items()))
        res.false_alarms = counts.get("TAMPERED", 0)
        res.failed = [why for v, why in outcomes if v != "INTACT"][:5]
        for name, label in labels.items():
            for spec in ("top1", "probs"):
                r = verify(fingerprint, _url(server, protocol, name), spec=spec)
                res.tampered_checks += 1
                res.flips[f"{label} / {spec}"] = r.mismatches
                if r.verdict == "TAMPERED":
                    res.caught += 1
                else:
                    res.missed.append(f"{label} / {spec}: {r.verdict} ({r.reason})")
        results.append(res)
    return results


def table(results: list[ProtocolResult]) -> str:
    """The results as a Markdown table, one row per protocol."""
    lines = ["| protocol | checks of the intact model | INTACT | false alarms (TAMPERED) | INCONCLUSIVE "
             "| seconds | tampered checks caught | max \\|logit diff\\| vs torch |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        diff = "-" if r.max_logit_diff is None else f"{r.max_logit_diff:.2g}"
        lines.append(f"| {r.protocol} | {r.checks} | {r.verdicts.get('INTACT', 0)} | {r.false_alarms} "
                     f"| {r.verdicts.get('INCONCLUSIVE', 0)} | {r.seconds:.1f} | {r.caught} / {r.tampered_checks} "
                     f"| {diff} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checks", type=int, default=300, help="checks of the intact model per protocol (default 300)")
    p.add_argument("--clients", type=int, default=2, help="concurrent clients (default 2)")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    models = demo_models()
    fp = Fingerprint.load(models.fingerprint)
    with tempfile.TemporaryDirectory(prefix="veriprint-triton-bench-") as tmp:
        server = TritonServer(Path(tmp), models.served())
        server.start()
        try:
            print(f"Triton ready in {time.perf_counter() - t0:.1f} s (models exported and loaded)", file=sys.stderr)
            results = measure(server, fp, models.labels, checks=args.checks, clients=args.clients,
                              model=models.model)
        finally:
            server.stop()
    print(table(results))
    for r in results:
        for key, n in r.flips.items():
            print(f"{r.protocol}: {key}: {n} of {len(fp)} samples differ")
        for why in r.failed + r.missed:
            print(f"{r.protocol}: {why}")
    if args.out:
        Path(args.out).write_text(json.dumps([asdict(r) for r in results], indent=1) + "\n")
    bad = any(r.verdicts.get("INTACT", 0) != r.checks or r.caught != r.tampered_checks for r in results)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
