"""Argument helpers shared by subcommands."""

from __future__ import annotations

import argparse


def add_model_arguments(p: argparse.ArgumentParser, *, required: bool = True) -> None:
    p.add_argument("--model", required=required,
                   help="model: package.module:factory, file.py:factory, .pt2, TorchScript or .onnx file")
    p.add_argument("--weights", default=None, help="weights for a factory model (.safetensors or state-dict .pt)")
    p.add_argument("--model-outputs", choices=["logits", "probs"], default="logits",
                   help="what the model returns (probs when its last op is a softmax)")


def add_data_arguments(p: argparse.ArgumentParser, *, default: str | None = None) -> None:
    p.add_argument("--data", default=default, required=default is None,
                   help="natural inputs: fashion-mnist, mnist-5k, digits, an .npz file or an image folder")
    p.add_argument("--split", choices=["train", "test"], default="test", help="split of a built-in data set")
    p.add_argument("--range", nargs=2, type=float, metavar=("LO", "HI"), default=None,
                   help="input range of user data (default: the data set's, else 0 1)")
    p.add_argument("--levels", type=int, default=None,
                   help="quantization levels of user data (default: the data set's, else 255)")


def add_generation_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--objective", choices=["ssf", "entropy"], default="ssf",
                   help="ssf: the paper's sensitivity (Eq. 6); entropy: IBSF top-k entropy")
    p.add_argument("--params", default="last",
                   help="parameters of interest: last, all, or comma-separated names/globs")
    p.add_argument("--outputs", choices=["probs", "logits"], default="probs", help="f in Eq. 6")
    p.add_argument("--eps", type=float, default=8 / 255, help="radius of the ball around each seed (input units)")
    p.add_argument("--norm", choices=["linf", "l2"], default="linf", help="norm of the ball")
    p.add_argument("--steps", type=int, default=1000, help="ascent steps (the paper's itr_max)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    p.add_argument("--batch-size", type=int, default=500, help="samples optimized together (bounds memory)")


def generation_config(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from veriprint.generate import GenerationConfig

    text: str = args.params
    params: str | tuple[str, ...] = text
    if text not in ("last", "all"):
        params = tuple(s.strip() for s in text.split(",") if s.strip())
    return GenerationConfig(steps=args.steps, lr=args.lr, eps=args.eps, norm=args.norm, objective=args.objective,
                            params=params, outputs=args.outputs, batch_size=args.batch_size)


def load_data_from(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from veriprint.data import InputDomain, load_data

    domain = None
    if args.range is not None or args.levels is not None:
        lo, hi = args.range if args.range is not None else (0.0, 1.0)
        domain = InputDomain(lo, hi, args.levels if args.levels is not None else 255)
    return load_data(args.data, split=args.split, domain=domain)
