"""``veriprint fingerprint``: make a fingerprint file for a model."""

from __future__ import annotations

import argparse

from veriprint.cli.common import (
    add_data_arguments,
    add_generation_arguments,
    add_model_arguments,
    generation_config,
    load_data_from,
)

HELP = "generate Sensitive-Samples for a model, select a few (MANC) and write a .vpf fingerprint"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    add_data_arguments(p)
    p.add_argument("--out", required=True, help="fingerprint file to write (.vpf)")
    p.add_argument("--bag", type=int, default=500, help="natural seeds to generate from")
    p.add_argument("--select", type=int, default=8, help="samples in the fingerprint (N_S)")
    p.add_argument("--selector", choices=["reach", "manc", "random", "tamper-aware"], default="reach",
                   help="selection: reach (default: samples whose labels reveal the smallest change of every "
                        "parameter tensor), MANC (the paper), random, or tamper-aware (covers simulated small changes)")
    p.add_argument("--neurons", choices=["penultimate", "all"], default="penultimate", help="MANC's neurons of interest")
    p.add_argument("--no-refine", action="store_true", help="skip boundary refinement (it helps label-only APIs)")
    p.add_argument("--seeds", choices=["boundary", "random"], default="boundary",
                   help="seeds with the smallest margins, balanced over classes (default, with refinement), "
                        "or drawn at random as in the paper")
    p.add_argument("--no-twins", action="store_true",
                   help="store single refined samples instead of pairs across the decision boundary")
    p.add_argument("--tolerance", type=float, default=0.0,
                   help="extra logit noise the deployment may add (GPU, TF32, float16 serving)")
    p.add_argument("--prob-tolerance", type=float, default=0.0, help="extra probability noise likewise")
    p.add_argument("--onnx-noise", action="store_true", help="include onnxruntime in the noise calibration")
    add_generation_arguments(p)
    p.add_argument("--seed", type=int, default=0, help="seed for drawing the bag")
    p.add_argument("--key", default=None, help="Ed25519 private key to sign the file (from veriprint keygen)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from veriprint.models import load_model
    from veriprint.pipeline import FingerprintConfig, make_fingerprint

    model = load_model(args.model, weights=args.weights)
    data = load_data_from(args)
    cfg = FingerprintConfig(bag=args.bag, select=args.select, selector=args.selector, neurons=args.neurons,
                            refine=not args.no_refine, seeds=args.seeds, twins=not args.no_twins,
                            tolerance=args.tolerance,
                            prob_tolerance=args.prob_tolerance, calibrate_onnx=args.onnx_noise, seed=args.seed,
                            generation=generation_config(args))
    fp, gen, sel = make_fingerprint(model, data, cfg, model_outputs=args.model_outputs, progress=not args.quiet,
                                    source=args.model)
    fp = fp.save(args.out, key=args.key)
    pairs = fp.meta["selection"].get("pairs", 0)
    shape = f"{pairs} pairs across the boundary" if pairs else f"{len(fp)} samples"
    print(f"wrote {args.out}: {shape} from a bag of {len(gen)} ({sel.method}), "
          f"sha256 {fp.sha256[:16]}..., {'signed' if args.key else 'unsigned'}")
    print(f"noise floor {fp.noise.floor:.3g} (measured margin noise {fp.noise.margin:.3g}); "
          f"margins {fp.margin.min().item():.3g}..{fp.margin.max().item():.3g}; "
          f"PSNR {fp.psnr.min().item():.1f}..{fp.psnr.max().item():.1f} dB; "
          f"coverage {sel.coverage[-1].item():.0%}" if sel.coverage.numel() else "")
    reach = fp.meta.get("reach")
    if reach:
        share = reach["share"][0]
        low = min(range(len(share)), key=share.__getitem__)
        print(f"reach (first order): a {reach['deltas'][0]:.0%} change of one parameter flips a query for "
              f"{reach['all'][0]:.0%} of parameters (mean over {len(share)} tensors; least: "
              f"{reach['tensors'][low]} {share[low]:.0%}); veriprint inspect lists every tensor")
    return 0
