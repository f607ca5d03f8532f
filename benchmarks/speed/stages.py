"""Which stages earn their cost: detection power against ascent steps, bag size, refinement
and twins, next to what each configuration costs.

    .venv/bin/python -m benchmarks.speed.stages --models fashion-cnn fashion-mlp pretrained-mnist \\
        --bag 200 --steps 0 10 50 250 1000 --json docs/measurements/stages-small.json
    .venv/bin/python -m benchmarks.speed.stages --models efficientnet-lite2 --bag 32 --steps 0 10 50 \\
        --tensors 24 --json docs/measurements/stages-lite2.json
    .venv/bin/python -m benchmarks.speed.stages --render docs/measurements/stages-small.json docs/measurements/stages-lite2.json \\
        --out docs/measurements/stages.md --plot docs/measurements/stages.png

For each model, every configuration makes a default fingerprint (8 top-1 queries, the time
budget off so that nothing is trimmed) and reports:

- its cost: seconds per stage and samples through the model (``meta["stages"]``);
- its **predicted** detection: the mean over parameter tensors of the share of entries whose
  ±5% (and ±1%) change flips at least one query, to first order (``meta["reach"]``);
- its **measured** detection: random single-parameter edits of ±5%, ``--draws`` entries per
  tensor each edited up and down (over ``--tensors`` tensors drawn at random when given),
  caught when some query's top-1 label changes: the mean over tensors of the share caught;
- the structural cases (casts, 8-bit quantization, pruning, relative weight noise, the
  largest weight of the last layer x1.05), through :func:`veriprint.verification.verify.verify`.

The configurations: ascent steps ``--steps`` with refinement and twins; at the middle
number of steps, the bag halved and quartered; and refinement or twins switched off. With
``--evaluate FILE.vpf``, the same measures of a fingerprint already made (by the CLI, say).
With ``--default``, first the default configuration under its default time budget (what
``veriprint fingerprint`` does with no options), side by side with the others.
Timings are only comparable within one run on a quiet machine.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmarks.lib.report import write_report
from veriprint.data import Dataset, load_data
from veriprint.pipeline import FingerprintConfig, make_fingerprint
from veriprint.pipeline.generate import GenerationConfig
from veriprint.targets import TorchTarget
from veriprint.verification.verify import verify

MODELS = ("fashion-cnn", "fashion-mlp", "pretrained-mnist", "efficientnet-lite2", "tiny-imagenet")


def log(msg: str) -> None:
    print(f"[stages] {msg}", file=sys.stderr, flush=True)


def load_model(name: str) -> tuple[nn.Module, Dataset, Dataset]:
    """The model, its training data (for tampering) and the data seeds are drawn from."""
    if name == "fashion-cnn":
        from veriprint.models.train import reference_model

        model, _, _ = reference_model("fashion-mnist", progress=False)
        return model.eval(), load_data("fashion-mnist", split="train", limit=12000), load_data(
            "fashion-mnist", split="test", limit=2000)
    if name == "fashion-mlp":
        from veriprint.models.train import TrainConfig, train_
        from veriprint.zoo import fashion_mlp

        train = load_data("fashion-mnist", split="train", limit=12000)
        torch.manual_seed(0)
        mlp = train_(fashion_mlp(), train, TrainConfig(epochs=2), progress=False)
        return mlp.eval(), train, load_data("fashion-mnist", split="test", limit=2000)
    if name == "pretrained-mnist":
        from veriprint.zoo import pretrained_mnist

        return pretrained_mnist().eval(), load_data("mnist-5k", split="train"), load_data("mnist-5k", split="test")
    if name == "efficientnet-lite2":
        from veriprint.zoo import efficientnet_lite2

        data = load_data("imagenet-samples:260")
        return efficientnet_lite2().eval(), data, data
    if name == "tiny-imagenet":
        from veriprint.zoo import tiny_imagenet_cnn

        g = torch.Generator().manual_seed(0)
        x = (torch.rand(64, 3, 64, 64, generator=g) * 255).round() / 255
        data = Dataset(x, torch.zeros(64, dtype=torch.long), name="random-64")
        return tiny_imagenet_cnn().eval(), data, data
    raise SystemExit(f"unknown model {name!r}: expected one of {', '.join(MODELS)}")


def configurations(bag: int, steps: list[int], default: bool = False) -> list[tuple[str, FingerprintConfig]]:
    mid = steps[len(steps) // 2]
    out = [("default (bag 500, 1000 steps, budget auto)", FingerprintConfig())] if default else []
    out += [(f"steps {s}", FingerprintConfig(bag=bag, budget="none", generation=GenerationConfig(steps=s)))
           for s in steps]
    for b in (bag // 2, bag // 4):
        if b >= 8:
            out.append((f"steps {mid}, bag {b}", FingerprintConfig(bag=b, budget="none",
                                                                  generation=GenerationConfig(steps=mid))))
    out.append((f"steps {mid}, no twins", FingerprintConfig(bag=bag, budget="none", twins=False,
                                                          generation=GenerationConfig(steps=mid))))
    out.append((f"steps {mid}, no refinement", FingerprintConfig(bag=bag, budget="none", refine=False, twins=False,
                                                               generation=GenerationConfig(steps=mid))))
    return out


def labels(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(x).argmax(1)


def edit_sweep(model: nn.Module, x: torch.Tensor, draws: int, tensors: int | None, seed: int = 0,
               delta: float = 0.05) -> tuple[float, int]:
    """Mean over tensors of the share of ±delta single-entry edits that change a label of ``x``."""
    g = torch.Generator().manual_seed(seed)
    work = copy.deepcopy(model)
    base = labels(model, x)
    named = list(zip(model.parameters(), work.parameters(), strict=True))
    pick = range(len(named)) if tensors is None or tensors >= len(named) else sorted(
        torch.randperm(len(named), generator=g)[:tensors].tolist())
    shares, edits = [], 0
    for t in pick:
        p, w = named[t]
        caught = 0
        idx = torch.randperm(p.numel(), generator=g)[:draws].tolist()
        for j in idx:
            for sign in (-1.0, 1.0):
                with torch.no_grad():
                    w.view(-1)[j] = p.reshape(-1)[j] * (1 + sign * delta)
                caught += int(bool((labels(work, x) != base).any()))
                edits += 1
            with torch.no_grad():
                w.view(-1)[j] = p.reshape(-1)[j]
        shares.append(caught / (2 * len(idx)))
    return sum(shares) / len(shares), edits


def last_weight(model: nn.Module) -> str:
    """The name of the last weight matrix (or kernel) of ``model``: its output layer's."""
    return [n for n, p in model.named_parameters() if n.endswith("weight") and p.dim() >= 2][-1]


def structural(model: nn.Module) -> list[tuple[str, Any]]:
    from veriprint.tamper import (
        CastConfig,
        PruneConfig,
        QuantizeConfig,
        WeightEditConfig,
        WeightNoiseConfig,
    )

    last = last_weight(model)
    return [("float16 cast", CastConfig("float16")), ("bfloat16 cast", CastConfig("bfloat16")),
            ("8-bit per-channel", QuantizeConfig(bits=8, granularity="channel")),
            ("2% pruning", PruneConfig(amount=0.02)), ("noise 1e-3 relative", WeightNoiseConfig(1e-3)),
            ("largest last-layer weight x1.05", WeightEditConfig(layer=last, amount=0.05, select="largest"))]


def run_model(name: str, bag: int, steps: list[int], draws: int, tensors: int | None,
              default: bool = False, only_default: bool = False) -> dict[str, Any]:
    from veriprint.tamper import tamper

    model, train, seeds = load_model(name)
    probe = seeds.subset(slice(0, 16))  # the tamper report's flip rates: a few inputs are enough here
    cases = [(case, tamper(model, cfg, data=train, eval_data=probe, progress=False).model)
             for case, cfg in structural(model)]
    rows = []
    todo = configurations(bag, steps, default or only_default)
    for label, cfg in todo[:1] if only_default else todo:
        t0 = time.perf_counter()
        fp, _, _ = make_fingerprint(model, seeds, cfg, progress=False)
        seconds = time.perf_counter() - t0
        reach = fp.meta.get("reach") or {}
        pred = {str(d): sum(s) / len(s) for d, s in zip(reach.get("deltas", []), reach.get("share", []), strict=True)}
        measured, edits = edit_sweep(model, fp.samples, draws, tensors)
        caught = {case: verify(fp, TorchTarget(m), spec="top1").verdict == "TAMPERED" for case, m in cases}
        row = {"config": label, "bag": cfg.bag, "steps": cfg.generation.steps, "refine": cfg.refine,
               "twins": cfg.twins, "seconds": seconds, "stages": fp.meta["stages"], "predicted": pred,
               "measured_5pct": measured, "edits": edits, "structural": caught,
               "pairs": fp.meta.get("pairs", 0), "plan": fp.meta.get("plan", {})}
        rows.append(row)
        log(f"{name} / {label}: {seconds:.0f} s, predicted ±5% {pred.get('0.05', float('nan')):.1%}, "
            f"measured {measured:.1%} over {edits} edits, structural {sum(caught.values())}/{len(caught)}")
    return {"model": name, "parameters": sum(p.numel() for p in model.parameters()),
            "tensors": sum(1 for _ in model.parameters()), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "rows": rows, "draws": draws, "tensor_sample": tensors}


def evaluate_file(name: str, path: Path, draws: int, tensors: int | None) -> dict[str, Any]:
    """The measures of :func:`run_model`'s rows for a fingerprint already made (e.g. by the CLI)."""
    from veriprint.fingerprint import Fingerprint
    from veriprint.tamper import tamper

    model, train, seeds = load_model(name)
    fp = Fingerprint.load(path)
    t0 = time.perf_counter()
    intact = verify(fp, TorchTarget(model), spec="top1")
    verify_s = time.perf_counter() - t0
    probe = seeds.subset(slice(0, 16))
    caught = {case: verify(fp, TorchTarget(tamper(model, cfg, data=train, eval_data=probe, progress=False).model),
                           spec="top1").verdict == "TAMPERED" for case, cfg in structural(model)}
    measured, edits = edit_sweep(model, fp.samples, draws, tensors)
    reach = fp.meta.get("reach") or {}
    return {"file": str(path), "intact": intact.verdict, "verify_s": verify_s, "queries": len(fp),
            "predicted": {str(d): sum(s) / len(s) for d, s in zip(reach.get("deltas", []), reach.get("share", []),
                                                                  strict=True)},
            "measured_5pct": measured, "edits": edits, "structural": caught, "plan": fp.meta.get("plan"),
            "stages": fp.meta.get("stages")}


def render(results: list[dict[str, Any]], command: str) -> str:
    out = ["# Which stages earn their cost", "",
           f"Generated by `{command}`; do not edit by hand. Each row is one default fingerprint "
           "(8 top-1 queries, no time budget) of the model; *predicted* is the tensor-mean share of "
           "entries whose ±5% / ±1% change flips a query (first order, `meta[\"reach\"]`), *measured* the "
           "tensor-mean share of random ±5% single-entry edits (each up and down) that change a query's label, "
           "*structural* the cases caught of: float16 and bfloat16 casts, 8-bit per-channel quantization, "
           "2% pruning, 1e-3 relative weight noise, the largest last-layer weight x1.05.", ""]
    for r in results:
        sample = f", {r['tensor_sample']} tensors drawn" if r.get("tensor_sample") else ""
        out += [f"## {r['model']} ({r['parameters']:,} parameters, {r['tensors']} tensors; "
                f"{r['draws']} entries per tensor{sample}; {r['threads']} threads)", "",
                *([f"Measured by `{r['command']}`, on a 2-core machine shared with other jobs (seconds "
                   "compare only roughly).", ""] if r.get("command") else []),
                "| configuration | seconds | generate s | refine + twins s | predicted ±5% | predicted ±1% "
                "| measured ±5% | structural |", "|---|---|---|---|---|---|---|---|"]
        for row in r["rows"]:
            st = row["stages"]
            rt = st.get("refine", {}).get("seconds", 0) + st.get("twins", {}).get("seconds", 0)
            s = row["structural"]
            out.append(f"| {row['config']} | {row['seconds']:.1f} | {st.get('generate', {}).get('seconds', 0):.1f} "
                       f"| {rt:.1f} | {row['predicted'].get('0.05', float('nan')):.1%} "
                       f"| {row['predicted'].get('0.01', float('nan')):.1%} | {row['measured_5pct']:.1%} "
                       f"| {sum(s.values())}/{len(s)} |")
        out.append("")
    return "\n".join(out)


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for i, r in enumerate(results):
        rows = [row for row in r["rows"] if row["config"].startswith("steps ") and "," not in row["config"]]
        s = [max(row["steps"], 1) for row in rows]
        c = f"C{i}"
        axes[0].plot(s, [row["measured_5pct"] for row in rows], "o-", color=c, label=f"{r['model']} measured")
        axes[0].plot(s, [row["predicted"].get("0.05", float("nan")) for row in rows], "x--", color=c,
                     label=f"{r['model']} predicted")
        axes[1].plot(s, [row["seconds"] for row in rows], "o-", color=c, label=r["model"])
    axes[0].set(xscale="log", xlabel="ascent steps (0 shown at 1)", ylabel="share of ±5% edits caught",
                title="detection against ascent steps")
    axes[1].set(xscale="log", yscale="log", xlabel="ascent steps (0 shown at 1)", ylabel="seconds",
                title="cost of the whole fingerprint")
    for a in axes:
        a.grid(alpha=0.3)
        a.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=["fashion-cnn"], choices=MODELS)
    p.add_argument("--bag", type=int, default=200)
    p.add_argument("--steps", type=int, nargs="+", default=[0, 10, 50, 250, 1000])
    p.add_argument("--draws", type=int, default=8, help="entries edited per tensor (default 8)")
    p.add_argument("--tensors", type=int, default=None, help="tensors drawn for the edit sweep (default all)")
    p.add_argument("--default", action="store_true",
                   help="also the default configuration under its default time budget, first")
    p.add_argument("--only-default", action="store_true", help="only the default configuration")
    p.add_argument("--evaluate", type=Path, default=None, metavar="FILE.vpf",
                   help="measure this fingerprint of the (first) model instead, and print the result as JSON")
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    p.add_argument("--render", type=Path, nargs="+", default=None, help="render these JSON results instead")
    p.add_argument("--out", type=Path, default=None, help="Markdown report")
    p.add_argument("--plot", type=Path, default=None, help="PNG of detection and cost against steps")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    if args.evaluate:
        print(json.dumps(evaluate_file(args.models[0], args.evaluate, args.draws, args.tensors), indent=1))
        return 0
    if args.render:
        results = [r for f in args.render for r in json.loads(f.read_text())]
    else:
        results = [run_model(m, args.bag, sorted(args.steps), args.draws, args.tensors, args.default,
                             args.only_default) for m in args.models]
        for r in results:
            r["command"] = "python -m benchmarks.speed.stages " + " ".join(sys.argv[1:] if argv is None else argv)
        if args.json:
            args.json.write_text(json.dumps(results, indent=1))
    command = "python -m benchmarks.speed.stages " + " ".join(sys.argv[1:] if argv is None else argv)
    text = render(results, command)
    if args.out or not (args.render and args.plot):
        write_report(text, args.out)
    if args.plot:
        plot(results, args.plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
