"""Deployment noise: the Markdown report and the deviation plot."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from benchmarks.studies.deployment_noise._common import SETS, SPECS
from benchmarks.studies.deployment_noise.variants import FULL_PRECISION, VARIANTS


def _e(x: float | None) -> str:
    return "-" if x is None else ("0" if x == 0 else f"{x:.2g}")


def _verdict(r: dict[str, Any]) -> str:
    if r["verdict"] == "INTACT":
        return "INTACT" + (f" ({r['ambiguous']} amb.)" if r["ambiguous"] else "")
    return f"**{r['verdict']}** ({r['mismatches']}/{r['compared']})"


def _model_tables(m: dict[str, Any]) -> list[str]:
    nz = m["noise"]
    lines = [
        f"### {m['model']}",
        "",
        f"{m['about']}; {m['data']}, test accuracy {m['test_accuracy']:.1%}. Fingerprint: {m['samples']} "
        f"samples, margins {_e(min(m['fingerprint_margins']))}..{_e(max(m['fingerprint_margins']))}; "
        f"margin floor {_e(nz['floor'])}, logit tolerance {_e(nz['logit_tolerance'])}, probability "
        f"tolerance {_e(nz['prob_tolerance'])} (calibrated on the CPU: {', '.join(nz['variants'])}). "
        f"CPU float32 vs float64: {_e(m['cpu_fp32_vs_f64']['natural'])} (natural), "
        f"{_e(m['cpu_fp32_vs_f64']['fingerprint'])} (fingerprint).",
        "",
        f"Deviation from the CPU's float32 logits ({m['natural']} natural inputs, the {m['samples']} "
        f"fingerprint samples, the {m['bag']} refined bag samples):",
        "",
        "| variant | max \\|Δz\\| natural | p99.9 | max \\|Δz\\| vs f64 | max \\|Δp\\| | top-1 changed "
        "(natural) | top-1 changed, margin ≥ floor (bag) | max \\|Δz\\| fingerprint |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in m["rows"]:
        if r["status"] != "ok":
            note = r.get("note") or r.get("error", "")
            lines.append(f"| {r['variant']} | {r['status']}: {note} | | | | | | |")
            continue
        n, b, f = r["sets"]["natural"], r["sets"]["bag"], r["sets"]["fingerprint"]
        lines.append(f"| {r['variant']} | {_e(n['max_logit'])} | {_e(n['p999_logit'])} | "
                     f"{_e(n['max_logit_f64'])} | {_e(n['max_prob'])} | {n['top1_changed']}/{n['n']} | "
                     f"{b['top1_changed_decided']}/{b['n']} | {_e(f['max_logit'])} |")
    lines += [
        "",
        "Verification of the CPU-made fingerprint (mismatches/compared when not INTACT), the smallest "
        "declared tolerances that would have matched every fingerprint sample (as a multiple of the "
        "fingerprint's logit tolerance), and the verdicts with those tolerances declared on the same "
        "samples (amb.: samples whose margin is now inside the raised floor, so top1 no longer checks them):",
        "",
        "| variant | top1 | probs | logits | needed logits | × logit tol. | needed probs | needed top1 "
        "| with declared: top1 / probs / logits |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in m["rows"]:
        if r["status"] != "ok":
            continue
        v, need, dec = r["verify"], r["needed"], r["verify_declared"]
        ratio = need["logit"] / nz["logit_tolerance"]
        lines.append(f"| {r['variant']} | {_verdict(v['top1'])} | {_verdict(v['probs'])} | "
                     f"{_verdict(v['logits'])} | {_e(need['logit'])} | {ratio:.3g} | {_e(need['prob'])} | "
                     f"{_e(need['top1'])} | {' / '.join(_verdict(dec[s]) for s in SPECS)} |")
    return [*lines, ""]


def _round_up(x: float) -> float:
    """``x`` rounded up to one significant digit."""
    if x <= 0:
        return 0.0
    p = 10 ** math.floor(math.log10(x))
    return float(math.ceil(x / p - 1e-9) * p)


def summarize(res: dict[str, Any]) -> list[str]:
    """The "what this means" paragraphs, computed from the results."""
    ok = [(m, r) for m in res["models"] for r in m["rows"] if r["status"] == "ok"]
    if not ok:
        return ["No variant ran."]
    by_variant: dict[str, list[tuple[dict[str, Any], dict[str, Any]]]] = {}
    for m, r in ok:
        by_variant.setdefault(r["variant"], []).append((m, r))
    clean = [v for v, mr in by_variant.items()
             if all(r["verify"][s]["verdict"] == "INTACT" for _, r in mr for s in SPECS)]
    def failed(r: dict[str, Any]) -> str:
        return ", ".join(f"{s}: {r['verify'][s]['verdict']} {r['verify'][s]['mismatches']}/"
                         f"{r['verify'][s]['compared']}" for s in SPECS if r["verify"][s]["verdict"] != "INTACT")

    alarms = [f"{r['variant']} on {m['model']} ({failed(r)})" for m, r in ok if failed(r)]
    out = []
    dev = res["environment"].get("device_name", res["environment"]["device"])
    out.append(f"On {dev} ({res['environment']['device']}, torch {res['environment']['torch']}), "
               f"{len(clean)} of {len(by_variant)} variants verified INTACT under top1, probs and logits for "
               f"every model: {', '.join(clean) or 'none'}. "
               + (f"False alarms (not INTACT although the weights are unchanged): {'; '.join(alarms)}."
                  if alarms else "No variant raised a false alarm."))
    full = [(m, r) for m, r in ok if r["variant"] in FULL_PRECISION]
    low = [(m, r) for m, r in ok if r["variant"] not in FULL_PRECISION]
    min_tol = min(m["noise"]["logit_tolerance"] for m in res["models"])
    min_floor = min(m["noise"]["floor"] for m in res["models"])
    for label, group in (("float32-weight variants", full), ("reduced-precision variants", low)):
        if not group:
            continue
        worst_m, worst_r = max(group, key=lambda mr: max(mr[1]["sets"][s]["max_logit"] for s in SETS))
        worst = max(worst_r["sets"][s]["max_logit"] for s in SETS)
        need = max(r["needed"]["logit"] for _, r in group)
        need_p = max(r["needed"]["prob"] for _, r in group)
        amb_m, amb_r = max(group, key=lambda mr: mr[1]["needed"]["logit"])
        amb = amb_r["verify_declared"]["top1"]
        changed = sum(r["sets"]["natural"]["top1_changed"] for _, r in group)
        total = sum(r["sets"]["natural"]["n"] for _, r in group)
        out.append(
            f"The {label} ({', '.join(sorted({r['variant'] for _, r in group}))}) moved logits by at most "
            f"{_e(worst)} on any input ({worst_r['variant']} on {worst_m['model']}), "
            f"{worst / min_tol:.3g}× the smallest logit tolerance ({_e(min_tol)}) and "
            f"{worst / min_floor:.3g}× the smallest margin floor ({_e(min_floor)}) of these fingerprints; "
            f"top-1 labels of natural inputs changed in {changed} of {total} predictions. "
            f"On the fingerprint samples the largest deviation was {_e(need)} in logits and {_e(need_p)} in "
            f"probabilities: declaring `FingerprintConfig(tolerance={_round_up(need):g}, "
            f"prob_tolerance={_round_up(need_p):g})` covers them"
            + (" (the default tolerances already do)." if need <= min_tol else
               f". That raises the margin floor to {_round_up(need) * 2:g}, so the fingerprint has to be made "
               "with it: declared only at verification, it leaves "
               f"{amb['ambiguous']} of the {amb['compared']} samples of {amb_m['model']} under {amb_r['variant']} "
               "inside the floor, where top1 no longer checks them."))
    risky = [(m, r) for m, r in ok if r["sets"]["bag"]["top1_changed_decided"]]
    if risky:
        worst_m, worst_r = max(risky, key=lambda mr: mr[1]["sets"]["bag"]["top1_changed_decided"])
        b = worst_r["sets"]["bag"]
        out.append(f"Among the refined bag samples (all candidates for the fingerprint, margins just above "
                   f"the CPU floor), {b['top1_changed_decided']} of {b['n']} changed their top-1 label under "
                   f"{worst_r['variant']} on {worst_m['model']}: that is the chance per sample of a top1 false "
                   "alarm when such a deployment is checked with the default tolerances.")
    else:
        out.append("No refined bag sample with a margin above the floor changed its top-1 label under any "
                   "variant.")
    return out


def render(res: dict[str, Any], plot: str | None = None) -> str:
    """The Markdown report."""
    env, prep = res["environment"], res["prepared"]
    lines = [
        "# Deployment noise: CPU-made fingerprints on another device",
        "",
        "Generated by `python -m benchmarks.studies.deployment_noise` (do not edit by hand). The fingerprints were made "
        f"on the CPU (torch {prep['torch']}, {prep['machine']}, {prep['threads']} threads, {prep['created']}); "
        f"the variants ran on {env.get('device_name', '?')} ({env['device']}), torch {env['torch']}"
        + (f", CUDA {env.get('cuda')}, cuDNN {env.get('cudnn')}" if "cuda" in env else "")
        + f", in {env['seconds']} s. torch's default flags there: "
        + ", ".join(f"{k}={v}" for k, v in env["default_flags"].items()) + ".",
        "",
        "## What this means",
        "",
        *[p + "\n" for p in summarize(res)],
        "## Variants",
        "",
        "| variant | what |",
        "|---|---|",
        *[f"| {v.name} | {v.about} |" for v in VARIANTS if v.name in res["variants"]],
        "",
        "Δz: largest |logit difference| of a sample against the CPU's float32 logits (p99.9: 99.9th "
        "percentile over samples of that largest difference), or against float64 (vs f64). top-1 changed "
        "(bag): refined bag samples whose CPU margin clears the fingerprint's floor yet whose label changed; "
        "each would be a top1 false alarm had it been picked. needed logits/probs/top1: the smallest "
        "`tolerance` / `prob_tolerance` / top1 tolerance (half the largest margin among changed labels) under "
        "which every fingerprint sample matches.",
        "",
        "## Results per model",
        "",
    ]
    for m in res["models"]:
        lines += _model_tables(m)
    if plot:
        lines += [f"![largest logit deviation per variant]({plot})", ""]
    return "\n".join(lines)


def plot_deviation(res: dict[str, Any], path: Path) -> bool:
    """One PNG: largest |Δ logit| (all sets) per variant and model, log axis."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    names = res["variants"]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for i, m in enumerate(res["models"]):
        xs, ys = [], []
        for r in m["rows"]:
            if r["status"] == "ok":
                xs.append(names.index(r["variant"]))
                ys.append(max(max(r["sets"][s]["max_logit"] for s in SETS), 1e-9))
        line = ax.plot(xs, ys, "o", label=m["model"], alpha=0.8)[0]
        ax.axhline(m["noise"]["logit_tolerance"], color=line.get_color(), ls="--", lw=0.8,
                   label="logit tolerance (dashed, per model)" if i == 0 else None)
    ax.set_yscale("log")
    ax.set_xticks(range(len(names)), names, rotation=35, ha="right")
    ax.set_ylabel("max |logit - CPU float32 logit|")
    ax.set_title(f"{res['environment'].get('device_name', res['environment']['device'])}: deviation per "
                 "variant (dashed: each fingerprint's logit tolerance; 0 shown as 1e-9)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
