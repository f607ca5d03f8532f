"""``veriprint demo``: the whole loop on the default data set, in a few seconds.

By default the demo verifies the shipped fingerprint against the shipped Fashion-MNIST CNN
and tampered copies of it, so that every machine prints the same table (the one in the
README). ``--regenerate`` makes a new fingerprint on this machine, and ``--train`` also
trains a new model; both results move with the CPU that computes them.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import time
from pathlib import Path

HELP = "verify the shipped fingerprint against the shipped model and tampered copies (or train, fingerprint and verify)"

DEFAULTS = {"bag": 150, "steps": 250, "select": 8}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default=None, choices=["fashion-mnist", "mnist-5k", "digits"],
                   help="data set (default: fashion-mnist when installed, else digits); only fashion-mnist has "
                        "shipped artefacts, the others train and fingerprint on this machine")
    p.add_argument("--train", action="store_true",
                   help="train the reference model on this machine (cached) instead of loading the shipped "
                        "weights; implies --regenerate")
    p.add_argument("--regenerate", action="store_true",
                   help="make a new fingerprint on this machine instead of verifying the shipped one")
    p.add_argument("--bag", type=int, default=None, help=f"seeds to generate from (with --regenerate; "
                                                         f"default {DEFAULTS['bag']})")
    p.add_argument("--steps", type=int, default=None, help=f"ascent steps (with --regenerate; default {DEFAULTS['steps']})")
    p.add_argument("--select", type=int, default=None, help=f"samples in the fingerprint (with --regenerate; "
                                                            f"default {DEFAULTS['select']})")
    p.add_argument("--out", default="demo.vpf", help="where to write the fingerprint used (a copy of the shipped one)")
    p.add_argument("--write-readme", metavar="README", default=None,
                   help="rewrite the demo table between its markers in this file (shipped artefacts only)")
    p.add_argument("--export", metavar="DIR", default=None,
                   help="write the model's weights, the fingerprint and their manifest (SHA-256, command, "
                        "machine) to DIR; the shipped ones come from `scripts/make-demo-assets.sh`")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--lm", action="store_true",
                   help="the demo on the shipped language model (fortunes-lm): fingerprint it on this machine "
                        "(16 prompts, 4 tokens each; a minute or two) and verify it and tampered copies through "
                        "a completions API, greedy tokens and top-5 logprobs (--out default demo-lm.vpf)")


def _fail(msg: str) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return 2


def run_lm(args: argparse.Namespace) -> int:
    """``veriprint demo --lm``."""
    from veriprint.lm import demo as lm_demo
    from veriprint.lm.model import load_lm

    for flag in ("train", "regenerate", "write_readme", "export", "data", "bag", "steps", "select"):
        if getattr(args, flag) not in (None, False):
            return _fail(f"--{flag.replace('_', '-')} is for the classifier demo; --lm makes its fingerprint on "
                         "this machine every time")
    out = args.out if args.out != "demo.vpf" else "demo-lm.vpf"
    start = time.perf_counter()
    lm = load_lm("fortunes-lm")
    print(f"[1/4] model: the shipped fortunes-lm ({sum(p.numel() for p in lm.model.parameters()):,} parameters, "
          f"weights sha256 {lm.weights_sha256[:16]}..., SHA-256 checked against the manifest)")
    cfg = lm_demo.DEMO_CONFIG
    print(f"[2/4] fingerprint: {cfg.prompts} prompts, {cfg.max_tokens} tokens each, made on this machine")
    fp = lm_demo.demo_fingerprint(lm).save(out)
    roles = fp.meta["roles"]
    print(f"      wrote {out}: {roles.count('border')} border and {roles.count('sensitive')} sensitive prompts, "
          f"noise floor {fp.noise.floor:.2g}, logprob tolerance {fp.noise.logit_tolerance:.2g}")
    print("[3/4] verify the intact model and tampered copies (greedy tokens and top-5 logprobs)")
    rows = lm_demo.verify_rows(fp, lm, progress=None if args.quiet else (lambda s: print(f"      {s}")))
    print("[4/4] verdicts")
    print(lm_demo.render(rows))
    print(f"took {time.perf_counter() - start:.0f} s")
    missed = [r.label for r in rows if r.tampered and r.verdicts["logprobs:5"][0] != "TAMPERED"]
    alarms = [r.label for r in rows if not r.tampered and any(v[0] == "TAMPERED" for v in r.verdicts.values())]
    return 1 if missed or alarms else 0


def run(args: argparse.Namespace) -> int:
    if getattr(args, "lm", False):
        return run_lm(args)
    from veriprint import demo
    from veriprint.data import default_dataset_name, load_data
    from veriprint.fingerprint import Fingerprint, FingerprintConfig, make_fingerprint
    from veriprint.models import load_model, model_hash
    from veriprint.models.train import REFERENCE_MODELS, accuracy, reference_model
    from veriprint.pipeline.generate import GenerationConfig

    start = time.perf_counter()
    name = args.data or default_dataset_name()
    train = args.train or name != "fashion-mnist"
    regenerate = args.regenerate or train
    given = [f"--{k}" for k in DEFAULTS if getattr(args, k) is not None]
    if given and not regenerate:
        return _fail(f"{', '.join(given)} set how a new fingerprint is made: add --regenerate")
    if args.write_readme and regenerate:
        return _fail("--write-readme records the table of the shipped artefacts: drop --train and --regenerate "
                     "(remake the artefacts with scripts/make-demo-assets.sh first)")
    if args.export and not regenerate:
        return _fail("--export writes new artefacts: add --train (or --regenerate)")
    if train and not args.train:
        print(f"no shipped model for {name}: training and fingerprinting on this machine")
    test = load_data(name, split="test")
    shipped = None if train else demo.load_shipped()
    if train:
        print(f"[1/4] model: the reference model for {name}, trained on this machine (once, then cached)")
        model, factory, weights = reference_model(name, progress=not args.quiet)
        train_config = dataclasses.asdict(REFERENCE_MODELS[name][1])
    else:
        assert shipped is not None
        if shipped.dataset != name:
            return _fail(f"the shipped demo model is for {shipped.dataset}, not {name}")
        factory, weights = shipped.factory, shipped.weights
        train_config = shipped.manifest["train_config"]
        print(f"[1/4] model: the shipped model for {name} (SHA-256 checked; made on {shipped.manifest['machine']})")
        model = load_model(factory, weights=weights)
    acc = accuracy(model, test)
    print(f"      {factory} with {weights}: test accuracy {acc:.1%}")
    if regenerate:
        bag, steps, select = (getattr(args, k) if getattr(args, k) is not None else v for k, v in DEFAULTS.items())
        print(f"[2/4] fingerprint, made on this machine: {bag} seeds, {steps} steps, {select} queries or more "
              "until every class labels one (refined to the decision boundary, in pairs across it)")
        cfg = FingerprintConfig(bag=bag, select=select, generation=GenerationConfig(steps=steps))
        fp, gen, _ = make_fingerprint(model, test, cfg, progress=not args.quiet, source=factory)
        fp = fp.save(args.out)
        log_s = f"mean log S of the bag {gen.log_s_before.mean().item():.2f} -> {gen.log_s_after.mean().item():.2f}"
    else:
        assert shipped is not None
        shutil.copyfile(shipped.fingerprint, args.out)
        fp = Fingerprint.load(args.out)
        if fp.info.model_hash != model_hash(model):
            return _fail(f"the shipped fingerprint {shipped.fingerprint} is not of the shipped model {weights}")
        print(f"[2/4] fingerprint: the shipped one (SHA-256 checked), made with `{shipped.manifest['command']}`; "
              "`--regenerate` makes a new one on this machine")
        log_s = f"log S of the samples {fp.log_s.min().item():.2f}..{fp.log_s.max().item():.2f}"
    info = fp.info
    print(f"      {info.pairs} pairs, classes {sorted(set(info.labels or ()))}")
    print(f"      wrote {args.out}: {log_s}, PSNR {fp.psnr.mean().item():.1f} dB, noise floor "
          f"{fp.noise.floor:.2g}, margins {fp.margin.min().item():.2g}..{fp.margin.max().item():.2g}")
    reach = info.reach
    if reach is not None and reach.overall:
        print(f"      reach: a 5% change of one parameter flips a query for {reach.overall[0]:.0%} of parameters "
              f"(mean over {len(reach.tensors)} tensors, first order; `veriprint inspect` lists them)")
    print("[3/4] verify the intact model and tampered copies (top-1 label API and full probabilities)")
    rows = demo.verify_rows(args.out, model, test.subset(slice(0, 500)))
    print("[4/4] verdicts")
    block = demo.readme_block(rows, accuracy=acc, meta=info, shipped=not regenerate)
    print("\n".join(block.splitlines()[1:-1]))
    if args.write_readme:
        path = Path(args.write_readme)
        try:
            path.write_text(demo.replace_readme_block(path.read_text(), block))
        except OSError as e:
            return _fail(f"cannot rewrite {path}: {e.strerror}")
        print(f"rewrote the demo table in {path}")
    if args.export:
        manifest = demo.export_assets(args.export, weights=weights, fingerprint=args.out, dataset=name,
                                      factory=factory, train_config=train_config, test_accuracy=acc,
                                      command="veriprint " + " ".join(sys.argv[1:]))
        print(f"wrote {manifest} and the files it names")
    print(f"done in {time.perf_counter() - start:.0f} s. Try: veriprint inspect {args.out} --png out/")
    return 0
