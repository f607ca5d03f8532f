"""``veriprint generate``: Sensitive-Samples only (no selection, no file)."""

from __future__ import annotations

import argparse

from veriprint.cli.common import (
    add_config_file_argument,
    add_data_arguments,
    add_generation_arguments,
    add_model_arguments,
    generation_config,
    load_data_from,
)

HELP = "generate Sensitive-Samples from natural seeds and print a summary (optionally save them as .npz)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    add_data_arguments(p)
    add_config_file_argument(p)
    add_generation_arguments(p)
    p.add_argument("--bag", type=int, default=100, help="number of seeds")
    p.add_argument("--seed", type=int, default=0, help="seed for drawing the seeds")
    p.add_argument("--out", default=None, help="write samples, seeds, log S, margins and PSNR to this .npz")


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from veriprint.models import load_model
    from veriprint.pipeline.generate import generate

    model = load_model(args.model, weights=args.weights)
    data = load_data_from(args).sample(args.bag, seed=args.seed)
    res = generate(model, data.x, generation_config(args), domain=data.domain, model_outputs=args.model_outputs)
    print(summary(res))
    if args.out:
        np.savez(args.out, samples=res.samples.numpy(), seeds=res.seeds.numpy(), log_s=res.log_s_after.numpy(),
                 margin=res.margin.numpy(), psnr=res.psnr.numpy())
        print(f"wrote {args.out}")
    return 0


def summary(res) -> str:  # type: ignore[no-untyped-def]
    return (f"{len(res)} samples in {res.seconds:.1f} s ({res.steps_run} steps): "
            f"mean log S {res.log_s_before.mean().item():.3f} -> {res.log_s_after.mean().item():.3f}, "
            f"PSNR {res.psnr.mean().item():.1f} dB, L-inf max {res.linf.max().item():.4f}, "
            f"median margin {res.margin.median().item():.3g}")
