"""Detection power through a top-1 label API: veriprint's default fingerprint vs the paper's
method, on three architectures and the subtle tampering cases a label API hides.

    .venv/bin/python -m benchmarks.detection_power --out docs/detection-power.md
    .venv/bin/python -m benchmarks.detection_power --quick --out /tmp/power.md   # minutes

For each model, two fingerprints are made from the same data with the same budget:

- **paper**: seeds drawn at random, Algorithm 1, the paper's MANC (no refinement, single
  samples);
- **veriprint** (the default ``FingerprintConfig``): seeds with the smallest natural
  margins balanced over classes, Algorithm 1, boundary refinement settled one pixel at a
  time, twins across the boundary, selection by first-order reach over every parameter
  tensor (:mod:`veriprint.reach`).

Every case is a real :func:`veriprint.tamper.tamper` run on a copy of the model. For each,
the report gives the 8-query fingerprint's top-1 verdict (through
:func:`veriprint.verify.verify`), the detection rate of one candidate (a sample for the
paper, a twin pair for veriprint) over the whole eligible bag, and the exact missing rate
of ``N_S`` random candidates (hypergeometric over the bag): ``N_S`` samples for the paper,
``N_S / 2`` pairs for veriprint.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from veriprint.data import Dataset, load_data  # noqa: E402
from veriprint.evaluate.missing import hypergeom_miss  # noqa: E402
from veriprint.fingerprint import Fingerprint  # noqa: E402
from veriprint.generate import GenerationConfig  # noqa: E402
from veriprint.noise import as_logits  # noqa: E402
from veriprint.pipeline import FingerprintConfig, make_fingerprint  # noqa: E402
from veriprint.refine import boundary_twins  # noqa: E402
from veriprint.targets import TorchTarget  # noqa: E402
from veriprint.train import accuracy  # noqa: E402
from veriprint.verify import verify  # noqa: E402


def log(msg: str) -> None:
    print(f"[power] {msg}", file=sys.stderr, flush=True)


@dataclass
class Candidates:
    """One method's fingerprint and its pool of candidates (single samples or twin pairs)."""

    name: str
    fingerprint: Fingerprint
    units: list[torch.Tensor]  # each (n, ...) : one tensor for singles, two for pairs
    labels: list[torch.Tensor]
    seconds: float

    @property
    def size(self) -> int:
        return int(self.units[0].shape[0])

    @property
    def per_unit(self) -> int:
        return len(self.units)


def _labels(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return torch.cat([as_logits(model(c), "logits").argmax(1) for c in torch.split(x, 500)])


def build(model: nn.Module, test: Dataset, method: str, bag: int, steps: int, tolerance: float = 0.0) -> Candidates:
    gen_cfg = GenerationConfig(steps=steps)
    if method == "paper":
        cfg = FingerprintConfig(bag=bag, seeds="random", refine=False, twins=False, selector="manc", generation=gen_cfg,
                                tolerance=tolerance)
    else:
        cfg = FingerprintConfig(bag=bag, generation=gen_cfg, tolerance=tolerance)
    t0 = time.perf_counter()
    fp, gen, _ = make_fingerprint(model, test, cfg, progress=False)
    seconds = time.perf_counter() - t0
    floor = fp.noise.floor
    samples = gen.samples
    eligible = gen.margin > floor
    if method == "paper":
        return Candidates(method, fp, [samples[eligible]], [_labels(model, samples[eligible])], seconds)
    twins, ok = boundary_twins(model, samples, gen.seeds, target=cfg.refine_factor * floor,
                               eps=cfg.generation.eps, norm=cfg.generation.norm, domain=test.domain)
    keep = eligible & ok
    a, b = samples[keep], twins[keep]
    return Candidates(method, fp, [a, b], [_labels(model, a), _labels(model, b)], seconds)


def missing(n: int, d: int, draws: int) -> float:
    """Exact missing rate of ``draws`` random candidates of ``n`` (NaN when the pool is smaller)."""
    return float("nan") if draws > n else hypergeom_miss(n, d, draws)


def detect(c: Candidates, tampered: nn.Module) -> tuple[int, int, str, int]:
    hit = torch.zeros(c.size, dtype=torch.bool)
    for x, lab in zip(c.units, c.labels, strict=True):
        hit |= _labels(tampered, x) != lab
    rep = verify(c.fingerprint, TorchTarget(tampered), spec="top1")
    return c.size, int(hit.sum()), rep.verdict, int(rep.mismatches)


def parameter_sweep(model: nn.Module, cands: dict[str, Candidates], draws: int, delta: float = 0.05,
                    seed: int = 0) -> list[dict[str, Any]]:
    """Random single-parameter edits by ``±delta`` in every tensor: the share the 8-query
    fingerprint catches (measured, both signs of each drawn entry), next to its first-order
    reach (``meta["reach"]``) and to the share some candidate of the bag catches (the
    best any selection from this bag could do, one edit at a time)."""
    import copy

    g = torch.Generator().manual_seed(seed)
    work = copy.deepcopy(model)
    fixed = {m: (c.fingerprint.samples, c.fingerprint.expected.argmax(1)) for m, c in cands.items()}
    rows = []
    for t, ((name, p), w) in enumerate(zip(model.named_parameters(), work.parameters(), strict=True)):
        idx = torch.randperm(p.numel(), generator=g)[:draws].tolist()
        caught = {m: 0.0 for m in cands}
        bag = {m: 0.0 for m in cands}
        for j in idx:
            for sign in (-1.0, 1.0):
                with torch.no_grad():
                    w.view(-1)[j] = p.reshape(-1)[j] * (1 + sign * delta)
                for m, c in cands.items():
                    x, lab = fixed[m]
                    caught[m] += float(bool((_labels(work, x) != lab).any())) / 2
                    bag[m] += float(any(bool((_labels(work, u) != ul).any())
                                        for u, ul in zip(c.units, c.labels, strict=True))) / 2
                with torch.no_grad():
                    w.view(-1)[j] = p.reshape(-1)[j]
        row: dict[str, Any] = {"tensor": name, "entries": p.numel(), "draws": len(idx)}
        for m, c in cands.items():
            reach = c.fingerprint.meta.get("reach") or {}
            pred = reach["share"][reach["deltas"].index(delta)][t] if reach and delta in reach["deltas"] else float("nan")
            row[m] = {"caught": caught[m] / len(idx), "predicted": pred, "bag": bag[m] / len(idx)}
        rows.append(row)
    return rows


def cases(model: nn.Module, quick: bool, steps_scale: float) -> list[tuple[str, Any]]:
    from veriprint.tamper import (
        CastConfig,
        FineTuneConfig,
        PoisonConfig,
        PruneConfig,
        QuantizeConfig,
        TrojanConfig,
        WeightEditConfig,
        WeightNoiseConfig,
    )

    weights = [n for n, p in model.named_parameters() if n.endswith("weight") and p.dim() >= 2]
    biases = [n for n, _ in model.named_parameters() if n.endswith("bias")]
    first, middle, last = weights[0], weights[len(weights) // 2], weights[-1]
    out: list[tuple[str, Any]] = [
        ("float16 cast", CastConfig("float16")),
        ("bfloat16 cast", CastConfig("bfloat16")),
        ("8-bit per-channel", QuantizeConfig(bits=8, granularity="channel")),
        ("2% pruning", PruneConfig(amount=0.02)),
        ("noise 1e-3 relative", WeightNoiseConfig(1e-3)),
    ]
    for tag, layer in (("first", first), ("middle", middle), ("last", last)):
        out.append((f"one weight x1.05, {tag} layer, largest", WeightEditConfig(layer=layer, amount=0.05, select="largest")))
        seeds = (1,) if quick else (1, 2, 3)
        for s in seeds:
            out.append((f"one weight x1.05, {tag} layer, random #{s}", WeightEditConfig(layer=layer, amount=0.05, seed=s)))
    out.append(("one bias x1.05, last layer, largest", WeightEditConfig(layer=biases[-1], amount=0.05, select="largest")))
    out.append(("one bias x1.05, last layer, random #1", WeightEditConfig(layer=biases[-1], amount=0.05, seed=1)))
    out.append(("last-layer fine-tune, lr 1e-5", FineTuneConfig(last=1, lr=1e-5, steps=max(int(200 * steps_scale), 20))))
    if not quick:
        st = max(int(300 * steps_scale), 20)
        out += [
            ("trojan (target 0)", TrojanConfig(target=0, steps=st, trigger_steps=max(int(200 * steps_scale), 20))),
            ("poisoning, error-generic (class 0)", PoisonConfig(target=0, steps=st)),
            ("poisoning, error-specific (0 to 2)", PoisonConfig(target=0, to_class=2, steps=st)),
        ]
    return out


def models(quick: bool) -> list[tuple[str, str, nn.Module, Dataset, Dataset]]:
    from veriprint.train import TrainConfig, reference_model, train_
    from veriprint.zoo import fashion_mlp, pretrained_mnist

    out = []
    cnn, _, _ = reference_model("fashion-mnist", progress=False)
    f_train = load_data("fashion-mnist", split="train", limit=12000)
    f_test = load_data("fashion-mnist", split="test", limit=2000)
    out.append(("fashion-cnn", "BatchNorm CNN, trained here (veriprint.zoo:fashion_cnn)", cnn.eval(), f_train, f_test))
    torch.manual_seed(0)
    mlp = fashion_mlp()
    train_(mlp, f_train, TrainConfig(epochs=2), progress=False)
    out.append(("fashion-mlp", "LayerNorm/GELU MLP, trained here (veriprint.zoo:fashion_mlp)", mlp.eval(), f_train, f_test))
    if not quick:
        m_train = load_data("mnist-5k", split="train")
        m_test = load_data("mnist-5k", split="test")
        out.append(("pretrained-mnist", "third-party pretrained MNIST CNN (digit-recognizer-py, veriprint.zoo:pretrained_mnist)",
                    pretrained_mnist(), m_train, m_test))
    return out


def fmt_rate(x: float) -> str:
    if math.isnan(x):
        return "n/a"
    return f"{100 * x:.1f}%" if x >= 1e-3 or x == 0 else f"{x:.1e}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="two trained models, fewer cases, small bags")
    p.add_argument("--bag", type=int, default=None, help="seeds per fingerprint (default 200; quick 80)")
    p.add_argument("--steps", type=int, default=None, help="generation steps (default 250; quick 60)")
    p.add_argument("--out", type=Path, default=None, help="Markdown report (default: stdout)")
    p.add_argument("--json", type=Path, default=None, help="raw results as JSON")
    p.add_argument("--tolerance", type=float, default=0.0,
                   help="declared logit tolerance of the deployment (e.g. 5e-3 for GPU serving with TF32)")
    p.add_argument("--models", nargs="+", default=None, help="only these models (fashion-cnn, fashion-mlp, pretrained-mnist)")
    p.add_argument("--draws", type=int, default=None,
                   help="random entries edited per parameter tensor in the sweep (default 64; quick 16)")
    p.add_argument("--images", type=Path, default=None, help="folder for seed/sample PNGs of each fingerprint")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    bag = args.bag or (80 if args.quick else 200)
    steps = args.steps or (60 if args.quick else 250)
    args.draws = args.draws or (16 if args.quick else 64)
    scale = 0.25 if args.quick else 0.5
    start = time.perf_counter()
    from veriprint.tamper import tamper

    results: list[dict[str, Any]] = []
    sweeps: dict[str, list[dict[str, Any]]] = {}
    model_rows = []
    for name, desc, model, train, test in models(args.quick):
        if args.models and name not in args.models:
            continue
        with torch.inference_mode():
            acc = accuracy(model, test)
        log(f"{name}: accuracy {acc:.3f}")
        cands = {m: build(model, test, m, bag, steps, args.tolerance) for m in ("paper", "veriprint")}
        model_rows.append((name, desc, acc, {m: (c.size, c.seconds, c.fingerprint.meta["selection"]) for m, c in cands.items()}))
        if args.images:
            from veriprint.cli.inspect import write_pngs

            for m, c in cands.items():
                tmp = write_pngs(c.fingerprint, args.images / f"{name}-{m}")
                tmp.replace(args.images / f"power-{name}-{m}.png")
                tmp.parent.rmdir()
        t0 = time.perf_counter()
        sweeps[name] = parameter_sweep(model, cands, args.draws)
        log(f"{name}: parameter sweep in {time.perf_counter() - t0:.0f} s")
        for case, cfg in cases(model, args.quick, scale):
            t0 = time.perf_counter()
            res = tamper(model, cfg, data=train, eval_data=test, progress=False)
            with torch.inference_mode():
                dz = max(float((res.model(c) - model(c)).abs().max()) for c in torch.split(test.x.float(), 500))
            row: dict[str, Any] = {"model": name, "case": case, "attack": res.report.attack,
                                   "flip_rate": res.report.flip_rate, "max_dz_test": dz, "success_name": res.report.success_name,
                                   "success": res.report.success, "changed": res.report.changed_params,
                                   "accuracy_after": res.report.clean_accuracy_after}
            for m, c in cands.items():
                n, d, verdict, mism = detect(c, res.model)
                per = 1 if m == "paper" else 2
                row[m] = {"candidates": n, "detecting": d, "verdict": verdict, "mismatches": mism,
                          "missing": {k: missing(n, d, k // per) for k in range(1, 9) if k % per == 0}}
            row["seconds"] = time.perf_counter() - t0
            results.append(row)
            log(f"{name} / {case}: paper {row['paper']['verdict']} ({row['paper']['mismatches']}/8), "
                f"veriprint {row['veriprint']['verdict']} ({row['veriprint']['mismatches']}/8)")
    total = time.perf_counter() - start
    text = render(results, model_rows, args, bag, steps, total, sweeps)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    else:
        sys.stdout.write(text)
    if args.json:
        args.json.write_text(json.dumps({"results": results, "sweeps": sweeps, "seconds": total}, indent=1, default=str))
    return 0


def render(results: list[dict[str, Any]], model_rows: list[Any], args: argparse.Namespace, bag: int, steps: int,
           total: float, sweeps: dict[str, list[dict[str, Any]]]) -> str:
    cmd = "python -m benchmarks.detection_power " + " ".join(sys.argv[1:] if args is not None else [])
    out = ["# Detection power through a top-1 label API", "",
           f"Generated by `{cmd.strip()}` in {total / 60:.1f} min (torch {torch.__version__}, "
           f"{torch.get_num_threads()} threads); do not edit by hand. Bag of {bag} seeds, {steps} generation "
           f"steps, 8 queries, `top1` spec, "
           + (f"declared tolerance {args.tolerance:g} logits (margin floor {2 * args.tolerance:g})"
              if args.tolerance else "default noise floor")
           + ", samples on the 8-bit grid within L-inf 8/255.", "",
           "- **paper**: random seeds, Algorithm 1, MANC, single samples (the paper's method).",
           "- **veriprint**: the default `FingerprintConfig`: boundary seeds balanced over classes, Algorithm 1, "
           "refinement settled to just above the noise floor, 4 twin pairs across the boundary, selection "
           "by first-order reach over every parameter tensor.", "",
           "Columns: the 8-query fingerprint's top-1 verdict (mismatching samples of 8); the detection rate of "
           "one candidate over the eligible bag (a sample for the paper, a twin pair for veriprint); and the "
           "exact missing rate of N_S random candidates from the bag (hypergeometric; veriprint spends 2 queries "
           "per pair, so only even N_S).", "", "## Models", "",
           "| model | what | test accuracy | paper: eligible samples, seconds | veriprint: eligible pairs, seconds |",
           "|---|---|---|---|---|"]
    for name, desc, acc, info in model_rows:
        out.append(f"| {name} | {desc} | {100 * acc:.1f}% | {info['paper'][0]}, {info['paper'][1]:.0f} s | "
                   f"{info['veriprint'][0]}, {info['veriprint'][1]:.0f} s |")
    for name, *_ in model_rows:
        rows = [r for r in results if r["model"] == name]
        caught = {m: sum(r[m]["verdict"] == "TAMPERED" for r in rows) for m in ("paper", "veriprint")}
        out += ["", f"## {name}", "",
                f"Caught by the 8-query top-1 fingerprint: paper {caught['paper']} of {len(rows)}, "
                f"veriprint {caught['veriprint']} of {len(rows)}.", "",
                "| case | labels flipped on test data | max logit change on test data | paper: verdict | per sample | miss N_S=1 | 2 | 4 | 8 | "
                "veriprint: verdict | per pair | miss N_S=2 | 4 | 6 | 8 |",
                "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            p, v = r["paper"], r["veriprint"]
            pv = f"{'**' if p['verdict'] != 'TAMPERED' else ''}{p['verdict']} ({p['mismatches']}/8){'**' if p['verdict'] != 'TAMPERED' else ''}"
            vv = f"{'**' if v['verdict'] != 'TAMPERED' else ''}{v['verdict']} ({v['mismatches']}/8){'**' if v['verdict'] != 'TAMPERED' else ''}"
            out.append(
                f"| {r['case']} | {100 * r['flip_rate']:.2f}% | {r['max_dz_test']:.2g} | {pv} | {fmt_rate(p['detecting'] / max(p['candidates'], 1))} | "
                + " | ".join(fmt_rate(p["missing"][k]) for k in (1, 2, 4, 8))
                + f" | {vv} | {fmt_rate(v['detecting'] / max(v['candidates'], 1))} | "
                + " | ".join(fmt_rate(v["missing"][k]) for k in (2, 4, 6, 8)) + " |")
        sweep = sweeps.get(name, [])
        if sweep:
            def mean(m: str, key: str, rows: list[dict[str, Any]] = sweep) -> float:
                return sum(r[m][key] for r in rows) / len(rows)

            out += ["", f"Random single-parameter edits of ±5%: {sweep[0]['draws']} entries (or all) of each "
                    "tensor, each edited up and down, one at a time. *caught*: share the 8-query fingerprint "
                    "catches (measured); *reach*: what the fingerprint's first-order reach predicts "
                    "(`veriprint inspect`); *bag*: share that at least one candidate of the bag catches, the "
                    "most any selection of it could reach.", "",
                    "| tensor | entries | paper: caught | reach | bag | veriprint: caught | reach | bag |",
                    "|---|---|---|---|---|---|---|---|"]
            for r in sweep:
                p_, v_ = r["paper"], r["veriprint"]
                out.append(f"| {r['tensor']} | {r['entries']} | {fmt_rate(p_['caught'])} | {fmt_rate(p_['predicted'])} | "
                           f"{fmt_rate(p_['bag'])} | **{fmt_rate(v_['caught'])}** | {fmt_rate(v_['predicted'])} | "
                           f"{fmt_rate(v_['bag'])} |")
            out.append(f"| mean over tensors | | {fmt_rate(mean('paper', 'caught'))} | {fmt_rate(mean('paper', 'predicted'))} | "
                       f"{fmt_rate(mean('paper', 'bag'))} | **{fmt_rate(mean('veriprint', 'caught'))}** | "
                       f"{fmt_rate(mean('veriprint', 'predicted'))} | {fmt_rate(mean('veriprint', 'bag'))} |")
    if args.images:
        import os

        base = args.out.parent if args.out else Path.cwd()
        out += ["", "## The samples", "",
                "Seed, fingerprint sample and their difference x10 for each query (`veriprint inspect --png`); "
                "veriprint's queries come in pairs, a sample and its twin across the decision boundary.", ""]
        for name, *_ in model_rows:
            for m in ("paper", "veriprint"):
                rel = os.path.relpath(args.images / f"power-{name}-{m}.png", base)
                out.append(f"- {name}, {m}: [{rel}]({rel})")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.exit(main())
