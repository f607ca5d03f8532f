"""Numeric noise between PyTorch and a model served by MLServer (onnxruntime behind HTTP),
and the false-alarm count of verification across batch sizes, thread counts and repeats.

    bash scripts/setup-serving.sh
    .venv/bin/python -m benchmarks.studies.serving_noise --model digits --out /tmp/noise-digits.json
    .venv/bin/python -m benchmarks.studies.serving_noise --model fashion-mnist --images 2000

The fingerprint is made in PyTorch; the served copy is an ONNX export run by onnxruntime
with 1 or 2 intra-op threads, queried in requests of 1, 8 or 64 samples. For natural test
images and for the fingerprint's samples it reports max |logit diff|, max |prob diff| and
top-1 agreement against torch (one full batch, default threads), then runs ``verify``
under several specs for every (threads, batch) pair, ``--repeats`` times, and counts
verdicts that are not INTACT (false alarms). Exit status 1 if there is any.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from testkit.servers.mlserver import MLServer, ServedModel
from veriprint.data import load_data
from veriprint.models.onnx_import import export_onnx
from veriprint.models.train import reference_model
from veriprint.numerics import softmax_np
from veriprint.pipeline import FingerprintConfig, make_fingerprint
from veriprint.pipeline.generate import GenerationConfig
from veriprint.targets import QueryBatch
from veriprint.targets.oip import OipTarget
from veriprint.verification.verify import verify

SPECS = ("top1", "probs", "logits")


def compare(ref: np.ndarray, got: np.ndarray) -> dict[str, float]:
    ref64, got64 = ref.astype(np.float64), got.astype(np.float64)
    agree = ref64.argmax(1) == got64.argmax(1)
    top2 = np.sort(ref64, 1)[:, -2:]
    margin = top2[:, 1] - top2[:, 0]
    return {
        "max_logit_diff": float(np.abs(ref64 - got64).max()),
        "max_prob_diff": float(np.abs(softmax_np(ref64) - softmax_np(got64)).max()),
        "label_agreement": float(agree.mean()),
        "disagreements": int((~agree).sum()),
        "smallest_margin": float(margin.min()),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="digits", choices=["digits", "fashion-mnist", "mnist-5k"])
    p.add_argument("--images", type=int, default=1000, help="natural test images compared")
    p.add_argument("--bag", type=int, default=100, help="fingerprint bag size")
    p.add_argument("--select", type=int, default=8, help="fingerprint samples")
    p.add_argument("--steps", type=int, default=300, help="generation steps")
    p.add_argument("--repeats", type=int, default=3, help="verify runs per (threads, batch, spec)")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8, 64])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    torch.manual_seed(0)

    t0 = time.perf_counter()
    model, _, _ = reference_model(args.model, progress=False)
    test = load_data(args.model, split="test")
    x = test.x[: args.images]
    print(f"model {args.model}: ready in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    fp, _, _ = make_fingerprint(model, test, FingerprintConfig(
        bag=args.bag, select=args.select, generation=GenerationConfig(steps=args.steps)), progress=False)
    print(f"fingerprint: {len(fp)} samples, margins {np.round(fp.margin.numpy(), 5).tolist()}, "
          f"noise {fp.noise.to_dict()}", file=sys.stderr)
    sets = {"natural": x, "fingerprint": fp.samples}
    with torch.inference_mode():
        ref = {k: model(v).float().numpy() for k, v in sets.items()}

    rows: list[dict[str, Any]] = []
    alarms: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as d:
        onnx = export_onnx(model, x[:2], Path(d) / "model.onnx")
        served = [ServedModel(f"m-t{t}", onnx, threads=t) for t in args.threads]
        with MLServer(Path(d) / "repo", served) as server:
            for t in args.threads:
                url = server.url(f"m-t{t}")
                for b in args.batches:
                    for name, v in sets.items():
                        got = OipTarget(url, max_batch=b).query(QueryBatch(v.numpy()))
                        rows.append({"set": name, "threads": t, "batch": b, **compare(ref[name], got)})
                    for spec in SPECS:
                        for rep in range(args.repeats):
                            r = verify(fp, url, spec=spec, max_batch=b)
                            if r.verdict != "INTACT":
                                alarms.append({"threads": t, "batch": b, "spec": spec, "repeat": rep,
                                               "verdict": r.verdict, "reason": r.reason})
    runs = len(args.threads) * len(args.batches) * len(SPECS) * args.repeats
    tol = {"margin_floor": fp.noise.floor, "logit_tolerance": fp.noise.logit_tolerance,
           "prob_tolerance": fp.noise.prob_tolerance, "measured_in_torch": fp.noise.to_dict()}
    print("| set | threads | batch | max abs logit diff | max abs prob diff | label agreement | "
          "smallest torch margin |\n|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['set']} ({len(sets[r['set']])}) | {r['threads']} | {r['batch']} | "
              f"{r['max_logit_diff']:.2e} | {r['max_prob_diff']:.2e} | {r['label_agreement']:.4f} | "
              f"{r['smallest_margin']:.2e} |")
    worst = max(r["max_logit_diff"] for r in rows if r["set"] == "fingerprint")
    worst_p = max(r["max_prob_diff"] for r in rows if r["set"] == "fingerprint")
    print(f"\ntolerances: margin floor {tol['margin_floor']:.3g}, logits {tol['logit_tolerance']:.3g}, "
          f"probs {tol['prob_tolerance']:.3g}; worst served noise on the fingerprint: logits {worst:.2e} "
          f"({worst / tol['logit_tolerance']:.3f} of the tolerance), probs {worst_p:.2e} "
          f"({worst_p / tol['prob_tolerance']:.3f}); fingerprint margins >= {float(fp.margin.min()):.3g}")
    print(f"false alarms: {len(alarms)} of {runs} verify runs (specs {', '.join(SPECS)}; "
          f"{len(fp) * runs} sample comparisons)")
    for a in alarms:
        print(f"  {a}")
    if args.out:
        Path(args.out).write_text(json.dumps({"model": args.model, "rows": rows, "tolerance": tol,
                                              "fingerprint_margins": fp.margin.tolist(),
                                              "false_alarms": alarms, "verify_runs": runs}, indent=1))
    return 1 if alarms else 0


if __name__ == "__main__":
    raise SystemExit(main())
