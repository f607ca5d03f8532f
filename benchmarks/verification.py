"""Verification overhead per query: `verify` against a local model and against MLServer.

A fingerprint of 8 samples is made (small bag, few steps: only its size matters here) for
the default Fashion-MNIST CNN. Timed alternately: ``verify(fp, target)`` (open the
target, query the 8 samples in one batch, validate and compare the answers) against the
bare model call it contains (a local forward pass under ``inference_mode``; for
MLServer, one raw ``OipTarget.query`` of the same batch over HTTP on 127.0.0.1).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import Context, Section, cnn, fmt_s, fmt_x, inputs, paired
from veriprint.targets import QueryBatch

ROOT = Path(__file__).resolve().parents[1]


def _fingerprint(model: torch.nn.Module, ctx: Context) -> Any:
    from veriprint.fingerprint import FingerprintConfig, make_fingerprint
    from veriprint.generate import GenerationConfig

    seeds = inputs(16, ctx.seed)
    fp, _, _ = make_fingerprint(model, seeds, FingerprintConfig(
        bag=16, select=8, generation=GenerationConfig(steps=5), seed=ctx.seed), progress=False)
    return fp


def run(ctx: Context) -> Section:
    from veriprint.verify import verify

    model = cnn(10, ctx.seed)
    fp = _fingerprint(model, ctx)
    x = fp.samples.float()
    reps = 5 if ctx.quick else 15
    sec = Section(
        key="verification",
        title="Verification overhead per query (8 samples, one batch)",
        text=("`veriprint.verify.verify(fp, target, spec)` vs the bare model call inside it, timed "
              "alternately. Overhead = median bare call x (median per-pair ratio - 1)."),
        headers=["target", "spec", "verify", "bare call", "overhead", "verify / bare", "verdict"],
    )
    data: dict[str, Any] = {}

    def bare_local() -> np.ndarray:
        with torch.inference_mode():
            return model(x).numpy()

    for spec in ("top1", "logits"):
        verdict = verify(fp, model, spec=spec).verdict
        p = paired(lambda s=spec: verify(fp, model, spec=s), bare_local, reps)
        sec.rows.append(["local torch module", spec, fmt_s(p.a), fmt_s(p.b), fmt_s(p.b * (p.ratio - 1)), fmt_x(p.ratio),
                         verdict])
        data[f"local_{spec}"] = {"verify_s": p.a, "bare_s": p.b, "ratio": p.ratio, "verdict": verdict}

    with tempfile.TemporaryDirectory() as d:
        from veriprint.onnx_import import export_onnx
        from veriprint.targets import OnnxTarget

        onnx = export_onnx(model, x[:2], Path(d) / "model.onnx")
        target = OnnxTarget(onnx)
        verdict = verify(fp, target, spec="top1").verdict
        p = paired(lambda: verify(fp, target, spec="top1"),
                   lambda: target.session.run(None, {target.input_name: x.numpy()}), reps)
        sec.rows.append(["local onnxruntime", "top1", fmt_s(p.a), fmt_s(p.b), fmt_s(p.b * (p.ratio - 1)), fmt_x(p.ratio),
                         verdict])
        data["onnx_top1"] = {"verify_s": p.a, "bare_s": p.b, "ratio": p.ratio, "verdict": verdict}

        exe = Path(os.environ.get("VERIPRINT_SERVING_VENV", ROOT / ".venv-serving")) / "bin" / "mlserver"
        if ctx.quick or not exe.exists():
            why = "quick mode" if ctx.quick else f"MLServer not installed ({exe}; run scripts/setup-serving.sh)"
            sec.notes.append(f"MLServer: not measured ({why}).")
        else:
            sys.path.insert(0, str(ROOT / "tests"))
            from servers.mlserver import MLServer, ServedModel
            from veriprint.targets.oip import OipTarget

            with MLServer(Path(d) / "repo", [ServedModel("cnn", onnx, threads=ctx.threads)]) as server:
                url = server.url("cnn")
                raw = OipTarget(url)
                for spec in ("top1", "logits"):
                    verdict = verify(fp, url, spec=spec).verdict
                    p = paired(lambda s=spec, u=url: verify(fp, u, spec=s),
                               lambda: raw.query(QueryBatch(x.numpy())), reps)
                    sec.rows.append(["MLServer 127.0.0.1 (OIP v2 REST)", spec, fmt_s(p.a), fmt_s(p.b),
                                     fmt_s(p.b * (p.ratio - 1)), fmt_x(p.ratio), verdict])
                    data[f"mlserver_{spec}"] = {"verify_s": p.a, "bare_s": p.b, "ratio": p.ratio,
                                                "verdict": verdict}
            sec.notes.append("For MLServer the bare call is one validated `OipTarget.query` over HTTP; "
                             "`verify` also opens a new target (reads the model's metadata) each time.")
    sec.data = data
    return sec
