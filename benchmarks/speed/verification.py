"""Verification overhead per query: `verify` against a local model and against MLServer.

A fingerprint of 8 samples is made (small bag, few steps: only its size matters here) for
the default Fashion-MNIST CNN. Timed alternately: ``verify(fp, target)`` (open the
target, query the 8 samples in one batch, validate and compare the answers) against the
bare model call it contains (a local forward pass under ``inference_mode``; for
MLServer, one raw ``OipTarget.query`` of the same batch over HTTP on 127.0.0.1).

On ``--device cuda`` the fingerprint is made on the CPU (fingerprinting is not what is
timed) and the local model is queried on the GPU through a callable target that copies
the batch to the device and the answers back, as any GPU-backed target must; the bare
call is that same copy-in, forward, copy-out. The ONNX row needs the ``onnx`` package
and the MLServer rows a serving environment; without them they are skipped with a note.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.lib import ROOT
from benchmarks.lib.timing import Context, Section, cnn, fmt_s, fmt_x, inputs, paired
from veriprint.targets import CallableTarget, QueryBatch


def _fingerprint(model: torch.nn.Module, ctx: Context) -> Any:
    from veriprint.pipeline import FingerprintConfig, make_fingerprint
    from veriprint.pipeline.generate import GenerationConfig

    seeds = inputs(16, ctx.seed)
    fp, _, _ = make_fingerprint(model, seeds, FingerprintConfig(
        bag=16, select=8, generation=GenerationConfig(steps=5), seed=ctx.seed), progress=False)
    return fp


def run(ctx: Context) -> Section:
    from veriprint.verification.verify import verify

    model = cnn(10, ctx.seed)  # on the CPU: the fingerprint's expected outputs come from here
    fp = _fingerprint(model, ctx)
    x = fp.samples.float()
    reps = 5 if ctx.quick else 15
    sec = Section(
        key="verification",
        title="Verification overhead per query (8 samples, one batch)",
        text=(f"Device of the local torch model: {ctx.device}. "
              "`veriprint.verification.verify.verify(fp, target, spec)` vs the bare model call inside it, timed "
              "alternately. Overhead = median bare call x (median per-pair ratio - 1)."),
        headers=["target", "spec", "verify", "bare call", "overhead", "verify / bare", "verdict"],
    )
    data: dict[str, Any] = {}

    local: Any
    if ctx.cuda:
        on_dev = cnn(10, ctx.seed, device=ctx.device)
        x_np = x.numpy()

        def forward(batch: np.ndarray) -> torch.Tensor:
            with torch.inference_mode():
                out: torch.Tensor = on_dev(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(ctx.device))
            return out

        def bare_local() -> np.ndarray:
            return forward(x_np).cpu().numpy()

        local = CallableTarget(forward)
        label = f"local torch module on {ctx.device} (`CallableTarget`)"
        sec.notes.append(f"On {ctx.device} the expected outputs come from the same weights run on the CPU; a "
                         "verdict other than INTACT in the `logits` row would mean the GPU's numerics (e.g. TF32 "
                         "convolutions) exceed the fingerprint's calibrated tolerance.")
    else:
        local, label = model, "local torch module"

        def bare_local() -> np.ndarray:
            with torch.inference_mode():
                return model(x).numpy()

    for spec in ("top1", "logits"):
        verdict = verify(fp, local, spec=spec).verdict
        p = paired(lambda s=spec: verify(fp, local, spec=s), bare_local, reps)
        sec.rows.append([label, spec, fmt_s(p.a), fmt_s(p.b), fmt_s(p.b * (p.ratio - 1)), fmt_x(p.ratio),
                         verdict])
        data[f"local_{spec}"] = {"verify_s": p.a, "bare_s": p.b, "ratio": p.ratio, "verdict": verdict,
                                 "device": ctx.device}

    with tempfile.TemporaryDirectory() as d:
        from veriprint.models.onnx_import import export_onnx
        from veriprint.targets import OnnxTarget

        try:
            onnx = export_onnx(model, x[:2], Path(d) / "model.onnx")
            target = OnnxTarget(onnx)
        except Exception as e:  # the exporter needs the onnx package, the target onnxruntime
            sec.notes.append(f"onnxruntime and MLServer: not measured (no ONNX model or runtime: "
                             f"`{type(e).__name__}: {e}`).")
            sec.data = data
            return sec
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
            try:
                _mlserver(sec, data, fp, x, onnx, Path(d), ctx, reps)
            except Exception as e:  # keep the local rows when the server cannot be started or queried
                sec.notes.append(f"MLServer: failed (`{type(e).__name__}: {e}`).")
    sec.data = data
    return sec


def _mlserver(sec: Section, data: dict[str, Any], fp: Any, x: torch.Tensor, onnx: Path, d: Path, ctx: Context,
              reps: int) -> None:
    from testkit.servers.mlserver import MLServer, ServedModel
    from veriprint.targets.oip import OipTarget
    from veriprint.verification.verify import verify

    with MLServer(d / "repo", [ServedModel("cnn", onnx, threads=ctx.threads)]) as server:
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
