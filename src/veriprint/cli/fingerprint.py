"""``veriprint fingerprint``: make a fingerprint file for a model."""

from __future__ import annotations

import argparse

from veriprint.cli.common import (
    add_config_file_argument,
    add_data_arguments,
    add_fingerprint_arguments,
    add_generation_arguments,
    add_model_arguments,
    fingerprint_config,
    load_data_from,
)

HELP = "generate Sensitive-Samples for a model, select a few (MANC) and write a .vpf fingerprint"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    add_data_arguments(p, required=False)
    p.add_argument("--out", required=True, help="fingerprint file to write (.vpf)")
    add_config_file_argument(p)
    add_fingerprint_arguments(p)
    add_generation_arguments(p)
    p.add_argument("--key", default=None, help="Ed25519 private key to sign the file (from veriprint keygen)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--recalibrate", action="store_true",
                   help="measure this machine's speed on the model again for the time budget's plan, instead of "
                        "using the one calibrated and cached by an earlier run (run it on an idle machine)")
    from veriprint.cli.lm import add_lm_fingerprint_arguments

    add_lm_fingerprint_arguments(p)


def run(args: argparse.Namespace) -> int:
    from veriprint.lm.model import is_lm_source

    if is_lm_source(args.model):
        from veriprint.cli.lm import fingerprint_lm

        return fingerprint_lm(args)
    from veriprint.errors import ConfigError
    from veriprint.models import load_model
    from veriprint.pipeline import make_fingerprint

    if args.data is None:
        raise ConfigError("expected --data (natural inputs: fashion-mnist, mnist-5k, digits, an .npz file or an "
                          "image folder) for a classifier; only a language model needs none")
    cfg = fingerprint_config(args)  # every setting checked before the model or the data is read
    model = load_model(args.model, weights=args.weights)
    data = load_data_from(args)
    fp, gen, sel = make_fingerprint(model, data, cfg, model_outputs=args.model_outputs, progress=not args.quiet,
                                    source=args.model, recalibrate=args.recalibrate)
    fp = fp.save(args.out, key=args.key)
    info = fp.info
    pairs = info.pairs
    shape = f"{pairs} pairs across the boundary" if pairs else f"{len(fp)} samples"
    print(f"wrote {args.out}: {shape} from a bag of {len(gen)} ({sel.method}), "
          f"sha256 {fp.sha256[:16]}..., {'signed' if args.key else 'unsigned'}")
    print(f"noise floor {fp.noise.floor:.3g} (measured margin noise {fp.noise.margin:.3g}); "
          f"margins {fp.margin.min().item():.3g}..{fp.margin.max().item():.3g}; "
          f"PSNR {fp.psnr.min().item():.1f}..{fp.psnr.max().item():.1f} dB; "
          f"coverage {sel.coverage[-1].item():.0%}" if sel.coverage.numel() else "")
    from veriprint.pipeline.cost import format_costs
    from veriprint.pipeline.plan import plan_line

    stages = dict(info.stages or {})
    if info.plan:
        print(plan_line(dict(info.plan), took=sum(v["seconds"] for v in stages.values()), stages=stages))

    costs = format_costs(stages)
    if costs:
        print("cost per stage (samples through the model; fwd+bwd: run with gradients):")
        print("\n".join("  " + line for line in costs.splitlines()))
    reach = info.reach
    if reach is not None and reach.tensors:
        share = reach.share[0]
        low = min(range(len(share)), key=share.__getitem__)
        print(f"reach (first order): a {reach.deltas[0]:.0%} change of one parameter flips a query for "
              f"{reach.overall[0]:.0%} of parameters (mean over {len(share)} tensors; least: "
              f"{reach.tensors[low]} {share[low]:.0%}); veriprint inspect lists every tensor")
    if info.budget is not None:
        from veriprint.selectors.budget import Budget

        print(f"query budget: {Budget.from_dict(dict(info.budget)).summary()}")
    if info.straddle is not None:
        from veriprint.pipeline.straddle import straddle_summary

        print(straddle_summary(dict(info.straddle)))
    return 0
