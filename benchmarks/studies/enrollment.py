"""Enrollment on CPU deployments whose numerics differ from the float32 fingerprint.

    .venv/bin/python -m benchmarks.studies.enrollment --pool-select 24 --checks 100

The model is the shipped demo CNN. Pools: the shipped demo fingerprint (8 samples, 4 twin
pairs) and, with ``--pool-select N``, a fresh pool of ``N`` samples made from a bag of
``2N`` Fashion-MNIST test images (15 ascent steps). For each deployment variant it prints
what the float32 fingerprint says there, what enrollment kept (with a declared tolerance
of ``--tolerance`` logits), the spread it measured, how many of ``--checks``
verifications with varied batch sizes said INTACT, and the verdict on a copy whose
weights moved by 1% served the same way.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
from torch import nn

from veriprint.data import load_data
from veriprint.demo import load_shipped
from veriprint.enrollment import EnrollmentError, enroll
from veriprint.fingerprint import Fingerprint
from veriprint.models import load_model
from veriprint.pipeline import FingerprintConfig, make_fingerprint
from veriprint.pipeline.generate import GenerationConfig
from veriprint.verification.verify import verify


class Autocast(nn.Module):
    def __init__(self, model: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.model, self.dtype = model, dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=self.dtype):
            return self.model(x).float()


class Cast(nn.Module):
    def __init__(self, model: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.model, self.dtype = copy.deepcopy(model).to(dtype), dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.to(self.dtype)).float()


def moved(model: nn.Module, scale: float = 0.01) -> nn.Module:
    bad = copy.deepcopy(model)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in bad.parameters():
            p.mul_(1 + scale * torch.randn(p.shape, generator=g))
    return bad


def variants(model: nn.Module) -> dict[str, nn.Module]:
    return {"float32": model, "autocast-bf16": Autocast(model, torch.bfloat16),
            "bfloat16 weights": Cast(model, torch.bfloat16)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pool-select", type=int, default=0, help="also make a pool of this many samples")
    ap.add_argument("--tolerance", type=float, default=0.1)
    ap.add_argument("--checks", type=int, default=100)
    args = ap.parse_args()
    s = load_shipped()
    model = load_model(s.factory, weights=s.weights)
    pools = {"demo (8)": Fingerprint.load(s.fingerprint)}
    if args.pool_select:
        t = time.perf_counter()
        data = load_data(s.dataset, split="test").subset(slice(0, 10 * args.pool_select))
        cfg = FingerprintConfig(bag=2 * args.pool_select, select=args.pool_select,
                                generation=GenerationConfig(steps=15))
        pool, _, _ = make_fingerprint(model, data, cfg, progress=False)
        pools[f"fresh ({len(pool)})"] = pool
        print(f"pool of {len(pool)} made in {time.perf_counter() - t:.0f} s")
    print("| pool | deployment | float32 fingerprint there | enrolled (kept, pairs) | measured spread "
          "(logits, margins) | INTACT checks | weights moved 1% |")
    print("|---|---|---|---|---|---|---|")
    for pname, pool in pools.items():
        for vname, served in variants(model).items():
            before = verify(pool, served, spec="top1")
            cell = f"{before.verdict} {before.mismatches}/{len(pool)}" if before.mismatches else before.verdict
            t = time.perf_counter()
            try:
                rep = enroll(pool, served, spec="top1", model=model, tolerance=args.tolerance, keep=len(pool))
            except EnrollmentError as e:
                print(f"| {pname} | {vname} | {cell} | refused: {str(e)[:80]} | | | |")
                continue
            took = time.perf_counter() - t
            fp = rep.fingerprint
            ok = sum(verify(fp, served, spec="top1", max_batch=1 + i % 5).verdict == "INTACT"
                     for i in range(args.checks))
            bad = verify(fp, type(served)(moved(served.model), served.dtype)  # type: ignore[call-arg]
                         if hasattr(served, "dtype") else moved(model), spec="top1")
            print(f"| {pname} | {vname} | {cell} | {rep.kept}, {rep.kept_pairs} ({took:.1f} s) | "
                  f"{rep.noise['logit']:.2g}, {rep.noise['margin']:.2g} | {ok}/{args.checks} | "
                  f"{bad.verdict} {bad.mismatches}/{len(fp)} |")


if __name__ == "__main__":
    main()
