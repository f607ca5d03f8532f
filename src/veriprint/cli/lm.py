"""The language-model side of ``veriprint fingerprint``, ``verify``, ``enroll`` and ``inspect``.

``fingerprint`` takes this path when ``--model`` names a zoo LM (``fortunes-lm``) or a
model folder with ``config.json``; ``verify`` and ``inspect`` when the file is an LM
fingerprint, ``enroll`` when the pool is. Heavy imports stay inside the functions.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any


def add_lm_fingerprint_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("language models (--model a zoo LM such as fortunes-lm, or a model folder; "
                             "--budget, --recalibrate, --pool, --seed, --safety, --min-floor and --tolerance apply too)")
    g.add_argument("--prompts", type=int, default=None, help="most prompts kept (default: 32)")
    g.add_argument("--max-tokens", type=int, default=None, help="generated tokens per prompt, 1 to 4 (default: 4)")
    g.add_argument("--border-share", type=float, default=None,
                   help="share of prompts searched as border prompts, a next-token near-tie (default: 1)")
    g.add_argument("--search-steps", type=int, default=None, help="substitution rounds per prompt (default: 8)")
    g.add_argument("--api", choices=["completions", "chat"], default=None,
                   help="the API the answers are for: completions (default) or chat (the tokenizer's chat template)")
    g.add_argument("--seed-texts", default=None, metavar="FILE",
                   help="natural seed texts, one per line (default: the shipped held-out fortunes)")


def add_lm_verify_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("language models (an LM fingerprint)")
    g.add_argument("--api", choices=["completions", "chat"], default=None,
                   help="which API to call: completions (default: the fingerprint's) or chat")
    g.add_argument("--served-model", default=None,
                   help="the model name an OpenAI-compatible server serves (default: the one it lists at /v1/models)")


def fingerprint_lm(args: argparse.Namespace) -> int:
    from pathlib import Path

    from veriprint.errors import ConfigError
    from veriprint.lm.builder import LmFingerprintConfig, make_lm_fingerprint
    from veriprint.lm.model import load_lm

    given: dict[str, Any] = {}
    for flag, field in (("prompts", "prompts"), ("max_tokens", "max_tokens"), ("border_share", "border_share"),
                        ("search_steps", "steps"), ("seed", "seed"), ("safety", "safety"),
                        ("min_floor", "min_floor"), ("tolerance", "tolerance"), ("budget", "budget"),
                        ("pool", "pool")):
        v = getattr(args, flag, None)
        if v is not None:
            given[field] = v
    if getattr(args, "api", None) == "chat":
        given["chat"] = True
    try:
        cfg = LmFingerprintConfig(**given)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"language-model fingerprint: {e}") from None
    seeds = None
    if args.seed_texts:
        path = Path(args.seed_texts)
        if not path.is_file():
            raise ConfigError(f"--seed-texts: expected a text file with one seed per line, got {args.seed_texts!r}")
        seeds = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    lm = load_lm(args.model)
    try:
        fp = make_lm_fingerprint(lm, cfg, seeds=seeds, source=args.model,
                                 recalibrate=bool(getattr(args, "recalibrate", False)))
    except ValueError as e:
        raise ConfigError(str(e)) from None
    fp = fp.save(args.out, key=args.key)
    roles = fp.meta["roles"]
    margins = fp.tensors["margins"][:, 0]
    print(f"wrote {args.out}: {len(fp)} prompts ({roles.count('border')} border, {roles.count('sensitive')} "
          f"sensitive), {fp.max_tokens} tokens each, {fp.meta['api']} API, sha256 {fp.sha256[:16]}..., "
          f"{'signed' if args.key else 'unsigned'}")
    print(f"noise floor {fp.noise.floor:.3g} (measured margin noise {fp.noise.margin:.3g}, logprob noise "
          f"{fp.noise.logit:.3g} over {', '.join(fp.noise.variants)}); first-token margins "
          f"{float(margins.min()):.3g}..{float(margins.max()):.3g}; took {fp.meta['seconds']} s")
    from veriprint.lm.plan import lm_plan_line

    print(lm_plan_line(fp.meta["plan"], fp.meta.get("stages")))
    reach = fp.meta.get("reach")
    if isinstance(reach, dict) and reach.get("all"):
        print("reach (first order): a +-5% change of one weight is revealed for "
              + ", ".join(f"{v[0]:.0%} of weights under {k}" for k, v in reach["all"].items())
              + f" (mean over {len(reach['tensors'])} tensors); veriprint inspect lists every tensor")
    return 0


def verify_lm_cli(args: argparse.Namespace) -> int:
    from veriprint.cli.common import target_options, write_report
    from veriprint.lm.fingerprint import LmFingerprint
    from veriprint.lm.verify import open_lm_target, verify_lm
    from veriprint.redact import redact
    from veriprint.targets.transport import TransportOptions

    fp = LmFingerprint.load(args.fingerprint, pubkey=args.pubkey)
    api = args.api or fp.meta.get("api", "completions")
    fields = {k: v for k, v in target_options(args).items() if k in TransportOptions.__dataclass_fields__}
    try:
        options = TransportOptions(**fields) if fields else None
        target = open_lm_target(args.target, api=api, served_model=args.served_model, options=options)
    except Exception as e:  # the target could not be opened: nothing was compared
        print(f"verdict: INCONCLUSIVE  (could not open the target: {type(e).__name__}: {redact(str(e))})")
        return 2
    report = verify_lm(fp, target, spec=args.spec or "top1-token", max_batch=args.max_batch)
    print(report.summary())
    if args.report:
        try:
            write_report(args.report, report.to_json())
        except OSError as e:
            print(f"error: could not write the report to {args.report!r}: {e.strerror or e}", file=sys.stderr)
    return report.exit_code


def enroll_lm_cli(args: argparse.Namespace) -> int:
    from veriprint.cli.common import target_options
    from veriprint.cli.enroll import batch_sizes, refused, written
    from veriprint.enrollment import EnrollmentError
    from veriprint.enrollment.lm import enroll_lm
    from veriprint.errors import ConfigError
    from veriprint.lm.fingerprint import LmFingerprint
    from veriprint.targets.transport import TransportOptions

    for flag, value in (("--model", args.model), ("--weights", args.weights),
                        ("--target-weights", args.target_weights), ("--prob-tolerance", args.prob_tolerance)):
        if value:
            raise ConfigError(f"{flag} is for a classifier's pool; {args.pool!r} is a language model's fingerprint "
                              f"(its --tolerance is in logprobs, and prompts are kept in pool order)")
    pool = LmFingerprint.load(args.pool, pubkey=args.pubkey)
    fields = {k: v for k, v in target_options(args).items() if k in TransportOptions.__dataclass_fields__}
    options = TransportOptions(**fields) if fields else None
    try:
        rep = enroll_lm(pool, args.target, spec=args.spec or "top1-token", rounds=args.rounds,
                        batch_sizes=batch_sizes(args.batch_sizes), seed=args.seed, keep=args.keep,
                        tolerance=args.tolerance, interval=args.interval, max_batch=args.max_batch, api=args.api,
                        served_model=args.served_model, options=options)
    except EnrollmentError as e:
        return refused(args, e)
    fp = rep.fingerprint.save(args.out, key=args.key)
    print(rep.summary())
    print(f"wrote {args.out}: {len(fp)} prompts, sha256 {fp.sha256[:16]}..., {'signed' if args.key else 'unsigned'}; "
          f"verify with: veriprint verify {args.out} --target URL --spec {rep.spec}")
    return written(args, {**rep.to_dict(), "sha256": fp.sha256})


def inspect_lm(args: argparse.Namespace) -> int:
    from veriprint.lm.fingerprint import LmFingerprint
    from veriprint.lm.verify import describe_prompts

    fp = LmFingerprint.load(args.fingerprint, pubkey=args.pubkey)
    m = fp.meta
    nf = fp.noise
    print(f"file: {args.fingerprint}")
    print(f"sha256: {fp.sha256}   signature: {fp.signature}")
    print("kind: language model")
    print(f"made by veriprint {m.get('tool_version', '?')} on {m.get('created', '?')} in {m.get('seconds', '?')} s")
    print(f"model: {m.get('model_source', '?')} ({m.get('model_class', '?')}, weights sha256 "
          f"{str(m.get('model_hash', '?'))[:16]}..., tokenizer sha256 {str(m.get('tokenizer_sha256', '?'))[:16]}..., "
          f"{m.get('vocab_size', '?')} tokens)")
    print(f"api: {m.get('api', '?')}, {fp.max_tokens} generated tokens per prompt, top "
          f"{fp.tensors['top_ids'].shape[2]} logprobs stored per token")
    print(f"noise: measured logprob {nf.logit:.3g}, margin {nf.margin:.3g} over {', '.join(nf.variants)}; "
          f"floor {nf.floor:.3g}, logprob tolerance {nf.logit_tolerance:.3g}, declared {nf.declared:g}")
    enr = m.get("enrollment")
    if isinstance(enr, dict):
        spread = enr.get("measured_spread", {})
        print(f"enrolled: {enr.get('time')} against {enr.get('target')} (spec {enr.get('spec')}, {enr.get('api')} "
              f"API), {enr.get('rounds')} rounds; kept {enr.get('kept')} of a pool of "
              f"{enr.get('pool', {}).get('size')}; measured spread: logprobs {spread.get('logprob', 0):.3g}, "
              f"margins {spread.get('margin', 0):.3g}; expected from the {enr.get('expected_from')}; serves "
              f"{enr.get('serves')}")
    plan = m.get("plan")
    if isinstance(plan, dict):
        from veriprint.lm.plan import lm_plan_line

        print(f"plan: {lm_plan_line(plan, m.get('stages'))}")
    reach = m.get("reach")
    if isinstance(reach, dict) and {"tensors", "sizes", "share", "deltas", "all"} <= set(reach):
        print(reach_table(reach))
    print(f"{'#':>3} {'role':<9} {'margin':>9} {'log S':>8}  prompt -> expected")
    print("\n".join(describe_prompts(fp)))
    return 0


def reach_table(reach: dict[str, Any]) -> str:
    """The stored first-order reach per tensor, one column per spec and change size."""
    known = ("top1-token", "logprobs:5")
    specs = sorted(reach["share"], key=lambda s: (known.index(s) if s in known else len(known), s))
    cols = [(s, j, f"{s} +-{d:.0%}") for s in specs for j, d in enumerate(reach["deltas"])]
    width = max(len(n) for n in reach["tensors"])
    lines = ["reach (first order): predicted coverage, the share of each tensor's weights whose change by +-delta "
             "(random sign) the prompts reveal (top1-token: a greedy token flips; logprobs:5: one of the top 5 "
             "logprobs moves by more than the tolerance)",
             f"{'tensor':<{width}} {'entries':>9} " + " ".join(f"{h:>{max(len(h), 7)}}" for _, _, h in cols)]
    for i, (n, size) in enumerate(zip(reach["tensors"], reach["sizes"], strict=True)):
        lines.append(f"{n:<{width}} {size:>9} " + " ".join(
            f"{reach['share'][s][j][i]:>{max(len(h), 7)}.1%}" for s, j, h in cols))
    lines.append(f"{'mean':<{width}} {'':>9} " + " ".join(
        f"{reach['all'][s][j]:>{max(len(h), 7)}.1%}" for s, j, h in cols))
    unseen = [n for i, n in enumerate(reach["tensors"]) if reach["share"][specs[0]][0][i] == 0]
    if unseen:
        lines.append(f"tensors no +-{reach['deltas'][0]:.0%} change of one entry flips a greedy token in: "
                     f"{', '.join(unseen)}")
    return "\n".join(lines)
