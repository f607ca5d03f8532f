"""``veriprint inspect``: show what a fingerprint file holds."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

HELP = "print a fingerprint's metadata, signature status and per-sample margin and PSNR (--png: images)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("fingerprint", help="the .vpf file")
    p.add_argument("--pubkey", default=None, help="check the signature with this Ed25519 public key")
    p.add_argument("--png", default=None, metavar="DIR",
                   help="write seed / sample / amplified difference images side by side to DIR")


def run(args: argparse.Namespace) -> int:
    from veriprint.fingerprint import Fingerprint
    from veriprint.lm.fingerprint import is_lm_file

    if is_lm_file(args.fingerprint):
        from veriprint.cli.lm import inspect_lm

        return inspect_lm(args)
    fp = Fingerprint.load(args.fingerprint, pubkey=args.pubkey)
    m = fp.info

    def g(v: Any) -> Any:
        """An entry, ``?`` when the file (written by another version, or edited and re-hashed)
        lacks it: only noise, domain and model outputs are required of a file."""
        return "?" if v is None else v

    def num(v: Any, fmt: str) -> str:
        return format(v, fmt) if isinstance(v, int | float) and not isinstance(v, bool) else str(g(v))

    gen = m.generation or {}
    print(f"file: {args.fingerprint}")
    print(f"sha256: {fp.sha256}   signature: {fp.signature}")
    print(f"made by veriprint {g(m.tool_version)} on {g(m.created)} in {g(m.seconds)} s "
          f"(metadata version {m.version})")
    print(f"model: {g(m.model_source)} (weights sha256 {str(g(m.model_hash))[:16]}..., outputs {m.model_outputs}, "
          f"{m.num_classes or fp.expected.shape[1]} classes, input {g(None if m.input_shape is None else list(m.input_shape))})")
    print(f"domain: {m.domain.to_dict()}")
    print(f"generation: objective {g(m.setting('generation', 'objective'))}, "
          f"params {g(m.setting('generation', 'params'))}, "
          f"eps {num(m.setting('generation', 'eps'), '.4g')} ({g(m.setting('generation', 'norm'))}), "
          f"steps {g(gen.get('steps_run'))}/{g(m.setting('generation', 'steps'))}, "
          f"lr {g(m.setting('generation', 'lr'))}")
    refine = m.setting("refine")
    sel = m.selection
    print(f"selection: {g(None if sel is None else sel.method)} {len(fp)} of {g(m.setting('bag'))} "
          f"({g(None if sel is None else sel.eligible)} eligible), refinement "
          f"{'?' if refine is None else 'on' if refine else 'off'}")
    prof = m.profile
    if prof is not None:
        where = ", ".join(f"{k} {prof[k]}" for k in ("device_name", "cuda", "cudnn") if prof.get(k))
        print(f"profile: expected outputs and floor computed on {prof.get('device')} in {prof.get('precision')} "
              f"(torch {prof.get('torch')}{', ' + where if where else ''})")
    else:
        print("profile: cpu/fp32 (recorded before profiles existed)")
    if m.straddle is not None:
        from veriprint.pipeline.straddle import straddle_summary

        print(straddle_summary(dict(m.straddle)))
    nf = fp.noise
    print(f"noise: measured logit {nf.logit:.3g}, margin {nf.margin:.3g}, prob {nf.prob:.3g} over "
          f"{', '.join(nf.variants)}; floor {nf.floor:.3g}, declared {nf.declared:g}")
    enr = m.enrollment
    if enr is not None:
        spread = enr.get("measured_spread", {})
        print(f"enrolled: {enr.get('time')} against {enr.get('target')} (spec {enr.get('spec')}, "
              f"{enr.get('form')} answers), {enr.get('rounds')} rounds; kept {enr.get('kept')} of a pool of "
              f"{enr.get('pool', {}).get('size')}; measured spread: logits {spread.get('logit', 0):.3g}, "
              f"margins {spread.get('margin', 0):.3g}; expected from the {enr.get('expected_from')}")
    print(f"{'#':>3} {'label':>5} {'margin':>10} {'log S':>9} {'PSNR dB':>8} {'Linf':>7}")
    linf = (fp.samples - fp.seeds).flatten(1).abs().amax(1)
    labels = fp.expected.argmax(1)
    for i in range(len(fp)):
        print(f"{i:>3} {int(labels[i]):>5} {fp.margin[i].item():>10.3g} {fp.log_s[i].item():>9.3f} "
              f"{fp.psnr[i].item():>8.2f} {linf[i].item():>7.4f}")
    if m.budget is not None:
        from veriprint.selectors.budget import Budget

        print(f"query budget: {Budget.from_dict(dict(m.budget)).summary()}")
    plan = m.plan
    if plan is not None and isinstance(plan.get("requested"), dict):
        from veriprint.pipeline.plan import plan_line

        print(f"plan: {plan_line(dict(plan))}")
    data = m.data
    if data is not None and data.get("views"):
        print(f"seeds: {data.get('size')} inputs with natural views ({', '.join(data['views'])})")
    labels_seen = sorted(set(labels.tolist()))
    classes = int(fp.expected.shape[1])
    blind = [c for c in range(classes) if c not in labels_seen]
    print(f"classes: {len(labels_seen)} of {classes} label a query; "
          + (f"blind to a decrease of their logit (no query labelled): {_ranges(blind)}" if blind
             else "every class shows a decrease of its logit"))
    reach = m.reach
    if reach is not None and reach.tensors and reach.deltas:
        print("reach (first order): predicted coverage, the share of each tensor's parameters whose change by "
              "+-delta (random sign) flips at least one query")
        width = max(len(n) for n in reach.tensors)
        print(f"{'tensor':<{width}} {'entries':>9} " + " ".join(f"{'+-' + format(d, '.0%'):>7}" for d in reach.deltas))
        for i, (n, size) in enumerate(zip(reach.tensors, reach.sizes, strict=True)):
            print(f"{n:<{width}} {size:>9} " + " ".join(f"{sh[i]:>7.1%}" for sh in reach.share))
        print(f"{'mean':<{width}} {'':>9} " + " ".join(f"{a:>7.1%}" for a in reach.overall))
        unseen = [n for i, n in enumerate(reach.tensors) if reach.share[0][i] == 0]
        if unseen:
            print(f"tensors no +-{reach.deltas[0]:.0%} change of one entry shows in: {', '.join(unseen)}")
    if args.png:
        out = write_pngs(fp, Path(args.png))
        print(f"images: {out}")
    return 0


def _ranges(values: list[int]) -> str:
    """``[0, 1, 2, 5]`` as ``0-2, 5``."""
    out: list[str] = []
    for v in values:
        if out and int(out[-1].split("-")[-1]) == v - 1:
            out[-1] = f"{out[-1].split('-')[0]}-{v}"
        else:
            out.append(str(v))
    return ", ".join(out)


def write_pngs(fp, directory: Path) -> Path:  # type: ignore[no-untyped-def]
    """Seed, sample and 10x amplified difference per sample, one row each (the paper's Figure 4)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    k = len(fp)
    fig, axes = plt.subplots(k, 3, figsize=(6, 2 * k), squeeze=False)
    dom = fp.domain

    def image(t):  # type: ignore[no-untyped-def]
        a = t.detach().float()
        if a.dim() == 1:
            side = round(a.numel() ** 0.5)
            a = a.view(1, side, -1) if side * side == a.numel() else a.view(1, 1, -1)
        return a.permute(1, 2, 0).squeeze(-1).numpy() if a.shape[0] in (1, 3) else a[0].numpy()

    labels = fp.expected.argmax(1).tolist()
    levels = dom.levels or 255
    for i in range(k):
        diff = (fp.samples[i] - fp.seeds[i]) * 10 / (dom.hi - dom.lo) + 0.5
        linf = float((fp.samples[i] - fp.seeds[i]).abs().max()) / (dom.hi - dom.lo) * levels
        for j, (title, img, vr) in enumerate([
            ("seed", fp.seeds[i], (dom.lo, dom.hi)),
            (f"sample {i}, label {labels[i]}, margin {fp.margin[i].item():.1e}", fp.samples[i], (dom.lo, dom.hi)),
            (f"x10 diff: PSNR {fp.psnr[i].item():.1f} dB, L-inf {linf:.0f}/{levels}", diff.clamp(0, 1), (0, 1)),
        ]):
            ax = axes[i][j]
            ax.imshow(image(img), cmap="gray", vmin=vr[0], vmax=vr[1])
            ax.set_axis_off()
            ax.set_title(title, fontsize=7)
    fig.tight_layout()
    path = directory / "samples.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
