"""What a fingerprint costs against the model's size: parameters, input size and classes,
per stage, and how well the plan stage predicts it.

    .venv/bin/python -m benchmarks.speed.scaling --json docs/measurements/scaling.json --out docs/measurements/scaling.md --plot docs/measurements/scaling.png
    .venv/bin/python -m benchmarks.speed.scaling --quick          # a few seconds, for CI
    .venv/bin/python -m benchmarks.speed.scaling --quick --device cuda   # the same on a GPU (benchmarks/speed/gpu.py runs it)

Every model is an ImageNet-shaped residual CNN with seeded random weights (BatchNorm,
stride-2 convolutions, a residual block per stage, global pooling), varied one factor at a
time around a base (64x64 input, 100 classes, width 32): input side, classes, width (so
parameters). With ``--lite2`` the pretrained EfficientNet-Lite2 (6.1M parameters,
260x260, 1,000 classes) is added as the real reference point.

Each model gets the same small fingerprint (``--bag`` seeds, ``--steps`` ascent steps,
8 queries, a time budget too large to trim anything) and reports, per stage, seconds and samples through the model
(``meta["stages"]``) next to what the plan stage predicted from its probe
(``meta["plan"]``), and what the **default** configuration would be trimmed to under the
default 10-minute budget on this machine. Timings only compare within one run on a quiet
machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmarks.lib.report import write_report
from veriprint.data import Dataset
from veriprint.deployments.profiles import check_device
from veriprint.errors import ConfigError
from veriprint.pipeline import FingerprintConfig, make_fingerprint
from veriprint.pipeline.generate import GenerationConfig
from veriprint.pipeline.plan import plan_fingerprint

STAGES = ("plan", "seeds", "generate", "calibrate", "refine", "twins", "select", "describe")


def log(msg: str) -> None:
    print(f"[scaling] {msg}", file=sys.stderr, flush=True)


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.down = nn.Sequential(nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.BatchNorm2d(cout), nn.ReLU())
        self.body = nn.Sequential(nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(),
                                  nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.down(x)
        return torch.relu(x + self.body(x))


def resnet_like(width: int, classes: int, seed: int = 0) -> nn.Module:
    """Three residual stages of ``width``, ``2 width``, ``4 width`` channels, random weights."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = nn.Sequential(_Block(3, width), _Block(width, 2 * width), _Block(2 * width, 4 * width),
                            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * width, classes))
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d) and m.running_mean is not None and m.running_var is not None:
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return net.eval()


def variants(quick: bool) -> list[tuple[str, dict[str, int]]]:
    base = {"side": 64, "classes": 100, "width": 32}
    if quick:
        return [("base", base), ("side 32", {**base, "side": 32})]
    out = [("base", base)]
    out += [(f"side {s}", {**base, "side": s}) for s in (32, 128, 224)]
    out += [(f"classes {c}", {**base, "classes": c}) for c in (10, 1000)]
    out += [(f"width {w}", {**base, "width": w}) for w in (16, 64)]
    return out


def images(n: int, side: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, side, side), generator=g).float() / 255


def measure(name: str, model: nn.Module, data: Dataset, bag: int, steps: int, device: str = "cpu") -> dict[str, Any]:
    # a budget too large to trim anything: the plan still times the passes and predicts each stage
    # (with budget="none" it times nothing)
    cfg = FingerprintConfig(bag=bag, select=8, budget="1000h", generation=GenerationConfig(steps=steps),
                            device=device)
    model = model.to(device)  # the plan below probes the model where the fingerprint runs
    t0 = time.perf_counter()
    fp, _, _ = make_fingerprint(model, data, cfg, progress=False)
    seconds = time.perf_counter() - t0
    default = plan_fingerprint(model, data.x, FingerprintConfig(device=device))
    row = {"model": name, "parameters": sum(p.numel() for p in model.parameters()),
           "input": list(data.x.shape[1:]), "classes": int(fp.expected.shape[1]), "seconds": seconds,
           "stages": fp.meta["stages"], "predicted": fp.meta["plan"]["predicted"],
           "probe": {"step_s": _step_s(fp.meta["plan"]["speed"])}, "default_plan": default.to_dict()}
    log(f"{name}: {seconds:.1f} s (predicted {sum(row['predicted'].values()):.1f} s); default plan: "
        f"{default.summary()}")
    return row


def _step_s(speed: dict[str, Any]) -> float:
    """Seconds of one ascent step per sample, at the largest batch the calibration timed."""
    b, s = max(((int(k), v) for k, v in speed["points"].get("step", {"1": 0.0}).items()), key=lambda kv: kv[0])
    return float(s) / b


def render(rows: list[dict[str, Any]], command: str, bag: int, steps: int, device: str = "cpu") -> str:
    where = (f"torch {torch.__version__}, {torch.get_num_threads()} threads" if device == "cpu"
             else f"torch {torch.__version__} on {device}"
             + (f", {torch.cuda.get_device_name(torch.device(device))}" if torch.cuda.is_available() else ""))
    budget = "10-minute budget" if device == "cpu" else "60-second budget of an accelerator"
    out = ["# Fingerprint cost against model size", "",
           f"Generated by `{command}` ({where}); do not edit by "
           f"hand. Each model: a fingerprint of bag {bag}, {steps} ascent steps, 8 queries, a time budget too large to trim anything. "
           "*Predicted* is the plan stage's estimate from its probe; *default plan* is what the default "
           f"configuration (bag 500, 1,000 steps) is trimmed to under the default {budget} here.", "",
           "| model | parameters | input | classes | seconds | predicted | ms per sample-step | "
           "refine + twins s | default plan |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        st = r["stages"]
        rt = st.get("refine", {}).get("seconds", 0) + st.get("twins", {}).get("seconds", 0)
        d = r["default_plan"]
        plan = f"bag {d['bag']}, steps {d['steps']}, predicted {d['total_s'] / 60:.1f} min"
        out.append(f"| {r['model']} | {r['parameters']:,} | {'x'.join(map(str, r['input']))} | {r['classes']} "
                   f"| {r['seconds']:.1f} | {sum(r['predicted'].values()):.1f} | {1000 * r['probe']['step_s']:.1f} "
                   f"| {rt:.1f} | {plan} |")
    out += ["", "Seconds per stage:", "", "| model | " + " | ".join(STAGES) + " |",
            "|---|" + "---|" * len(STAGES)]
    for r in rows:
        out.append(f"| {r['model']} | " + " | ".join(f"{r['stages'].get(s, {}).get('seconds', 0):.1f}"
                                                    for s in STAGES) + " |")
    return "\n".join(out) + "\n"


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4.5))
    bottom = [0.0] * len(rows)
    for s in STAGES:
        vals = [r["stages"].get(s, {}).get("seconds", 0.0) for r in rows]
        ax.bar(range(len(rows)), vals, bottom=bottom, label=s)
        bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
    ax.plot(range(len(rows)), [sum(r["predicted"].values()) for r in rows], "k_", markersize=30, mew=2,
            label="predicted by the plan")
    ax.set_xticks(range(len(rows)), [f"{r['model']}\n{r['parameters'] / 1e6:.2g}M" for r in rows], fontsize=7)
    ax.set(ylabel="seconds", title="fingerprint cost per stage (same small configuration)")
    ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="two tiny models, a tiny fingerprint")
    p.add_argument("--bag", type=int, default=None, help="seeds (default 16; quick 8)")
    p.add_argument("--steps", type=int, default=None, help="ascent steps (default 10; quick 2)")
    p.add_argument("--lite2", action="store_true", help="add the pretrained EfficientNet-Lite2")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N: where every stage runs")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--out", type=Path, default=None, help="Markdown report (default: stdout)")
    p.add_argument("--plot", type=Path, default=None)
    args = p.parse_args(argv)
    try:
        check_device(args.device)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    bag = args.bag or (8 if args.quick else 16)
    steps = args.steps if args.steps is not None else (2 if args.quick else 10)
    rows = []
    for name, v in variants(args.quick):
        data = Dataset(images(max(64, bag), v["side"]), None, name=f"random-{v['side']}")
        rows.append(measure(name, resnet_like(v["width"], v["classes"]), data, bag, steps, args.device))
    if args.lite2:
        from veriprint.data import load_data
        from veriprint.zoo import efficientnet_lite2

        rows.append(measure("EfficientNet-Lite2", efficientnet_lite2(), load_data("imagenet-samples:260"), bag, steps,
                            args.device))
    command = "python -m benchmarks.speed.scaling " + " ".join(sys.argv[1:] if argv is None else argv)
    text = render(rows, command, bag, steps, args.device)
    write_report(text, args.out)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    if args.plot:
        plot(rows, args.plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
