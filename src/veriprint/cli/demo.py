"""``veriprint demo``: the whole loop on the default data set, in a few minutes."""

from __future__ import annotations

import argparse
import copy
import time

HELP = "train (or reuse) a small model, fingerprint it, verify it and tampered copies, print the verdicts"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default=None, choices=["fashion-mnist", "mnist-5k", "digits"],
                   help="data set (default: fashion-mnist when installed, else digits)")
    p.add_argument("--bag", type=int, default=150, help="seeds to generate from")
    p.add_argument("--steps", type=int, default=250, help="ascent steps")
    p.add_argument("--select", type=int, default=8, help="samples in the fingerprint")
    p.add_argument("--out", default="demo.vpf", help="where to write the fingerprint")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _tampered(model, data):  # type: ignore[no-untyped-def]
    """The intact model and tampered copies: the tampering registry's attacks, plus two simple
    edits (the tampering suite has the rest)."""
    import torch

    from veriprint.tamper import CastConfig, QuantizeConfig, WeightEditConfig, tamper

    def edit(fn):  # type: ignore[no-untyped-def]
        m = copy.deepcopy(model)
        with torch.no_grad():
            fn(m)
        return m

    def attack(config):  # type: ignore[no-untyped-def]
        return tamper(model, config, data=data, progress=False).model

    params = dict(model.named_parameters())
    last_w = [n for n in params if n.endswith("weight") and params[n].dim() == 2][-1]
    first_w = next(iter(params))

    def largest_x105(name: str) -> WeightEditConfig:
        return WeightEditConfig(layer=name, mode="scale", amount=0.05, select="largest")

    def noise(m):  # type: ignore[no-untyped-def]
        g = torch.Generator().manual_seed(0)
        for p in m.parameters():
            p.add_(torch.randn(p.shape, generator=g) * p.std() * 1e-3)

    def prune(m):  # type: ignore[no-untyped-def]
        for p in m.parameters():
            if p.dim() > 1:
                k = max(1, int(0.02 * p.numel()))
                thr = p.abs().flatten().kthvalue(k).values
                p.masked_fill_(p.abs() <= thr, 0.0)

    return [
        ("intact copy", copy.deepcopy(model)),
        ("float16 weights", attack(CastConfig(dtype="float16", buffers=False))),
        ("8-bit weights (per tensor)", attack(QuantizeConfig(bits=8, granularity="tensor", scope="all"))),
        ("2% magnitude pruning", edit(prune)),
        ("Gaussian noise 1e-3 relative", edit(noise)),
        (f"one weight of {last_w} x1.05", attack(largest_x105(last_w))),
        (f"one weight of {first_w} x1.05", attack(largest_x105(first_w))),
    ]


def run(args: argparse.Namespace) -> int:
    from veriprint.data import default_dataset_name, load_data
    from veriprint.fingerprint import FingerprintConfig, make_fingerprint
    from veriprint.generate import GenerationConfig
    from veriprint.train import accuracy, reference_model
    from veriprint.verify import verify

    start = time.perf_counter()
    name = args.data or default_dataset_name()
    print(f"[1/4] model: the reference model for {name} (trained once, then cached)")
    model, factory, weights = reference_model(name, progress=not args.quiet)
    test = load_data(name, split="test")
    print(f"      {factory} with {weights}: test accuracy {accuracy(model, test):.1%}")
    print(f"[2/4] fingerprint: {args.bag} seeds, {args.steps} steps, {args.select} queries "
          "(refined to the decision boundary, in pairs across it)")
    cfg = FingerprintConfig(bag=args.bag, select=args.select, generation=GenerationConfig(steps=args.steps))
    fp, gen, _ = make_fingerprint(model, test, cfg, progress=not args.quiet, source=factory)
    fp = fp.save(args.out)
    print(f"      {fp.meta['selection']['pairs']} pairs, classes {sorted(set(fp.meta['labels']))}")
    print(f"      wrote {args.out}: mean log S {gen.log_s_before.mean().item():.2f} -> "
          f"{gen.log_s_after.mean().item():.2f}, PSNR {fp.psnr.mean().item():.1f} dB, noise floor "
          f"{fp.noise.floor:.2g}, margins {fp.margin.min().item():.2g}..{fp.margin.max().item():.2g}")
    reach = fp.meta.get("reach")
    if reach:
        print(f"      reach: a 5% change of one parameter flips a query for {reach['all'][0]:.0%} of parameters "
              f"(mean over {len(reach['tensors'])} tensors, first order; `veriprint inspect` lists them)")
    print("[3/4] verify the intact model and tampered copies (top-1 label API and full probabilities)")
    rows = []
    for label, candidate in _tampered(model, test.subset(slice(0, 500))):
        top1 = verify(args.out, candidate, spec="top1")
        probs = verify(args.out, candidate, spec="probs")
        rows.append((label, top1.verdict, top1.mismatches, probs.verdict, probs.mismatches, top1.queries))
    print("[4/4] verdicts")
    width = max(len(r[0]) for r in rows)
    print(f"  {'model':<{width}}  {'top1':<9} {'flips':>5}  {'probs':<9} {'diffs':>5}  queries")
    for label, v1, m1, v2, m2, q in rows:
        print(f"  {label:<{width}}  {v1:<9} {m1:>5}  {v2:<9} {m2:>5}  {q:>7}")
    print(f"done in {time.perf_counter() - start:.0f} s. Try: veriprint inspect {args.out} --png out/")
    return 0
