"""What an LM fingerprint catches, and how often it cries wolf.

Usage (from the repository root)::

    PYTHONPATH=src .venv/bin/python -m benchmarks.studies.lm_tampers [--prompts 32] [--max-tokens 4]
        [--repeats 3] [--json FILE] [--save FP.vpf]

1. Makes the default LM fingerprint of the shipped ``fortunes-lm`` (at most ``--prompts``
   prompts, ``--max-tokens`` generated tokens each), timing it and recording peak memory
   (the process's peak resident set, and the peak of Python allocations).
2. Verifies every LM tamper of :mod:`veriprint.lm.tamper` at its defaults (and a few
   settings more; torchao's int8 and int4 where torchao is installed) with ``top1-token``
   and ``logprobs:5``, through the local completions target (a chat target for the
   system-prompt change).
3. Checks the intact model ``--repeats`` times at every batch size 1, 2, 4, 8, 16 and 32,
   eager and SDPA attention, for both specs, and counts verdicts other than INTACT.

Prints a Markdown report (and writes the raw rows as JSON with ``--json``).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time
import tracemalloc
from typing import Any

import torch


def torchao_missing() -> str | None:
    """Why the torchao rows cannot run here (``None`` when they can)."""
    import importlib.util

    if importlib.util.find_spec("torchao") is None:
        return "torchao is not installed (pip install 'veriprint[torchao]')"
    return None


def tamper_list() -> list[tuple[str, object]]:
    """The tampers every LM benchmark runs: a row name and the tamper's config (the torchao
    rows only where torchao is installed)."""
    from veriprint.lm.tamper import (
        LmCastConfig,
        LmFineTuneConfig,
        LmLoraConfig,
        LmQuantizeConfig,
        LmSiblingConfig,
        LmSystemPromptConfig,
        LmTorchaoConfig,
    )

    rows: list[tuple[str, object]] = [
        ("float16 (weights and compute)", LmCastConfig("float16")),
        ("bfloat16 (weights and compute)", LmCastConfig("bfloat16")),
        ("int8 weights, per channel", LmQuantizeConfig(8)),
        ("int8 weights, per tensor", LmQuantizeConfig(8, "tensor")),
    ]
    if torchao_missing() is None:
        rows += [
            ("torchao int8 weight-only", LmTorchaoConfig("int8-weight")),
            ("torchao int4 weight-only, groups of 32", LmTorchaoConfig("int4-weight", 32)),
            ("torchao int8 dynamic activations, int4 weights (groups of 32)",
             LmTorchaoConfig("int8-dynamic-int4-weight", 32)),
        ]
    rows += [
        ("1 fine-tuning step, lr 1e-5", LmFineTuneConfig(1, 1e-5)),
        ("1 fine-tuning step, lr 1e-6", LmFineTuneConfig(1, 1e-6)),
        ("LoRA rank 4 merged, scale 1e-2", LmLoraConfig(4, 1e-2)),
        ("LoRA rank 4 merged, scale 1e-3", LmLoraConfig(4, 1e-3)),
        ("sibling checkpoint (3/4 of the steps)", LmSiblingConfig()),
        ("chat API with a system prompt", LmSystemPromptConfig()),
    ]
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--max-tokens", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", default=None)
    p.add_argument("--save", default=None, help="also write the fingerprint here (.vpf)")
    args = p.parse_args(argv)

    from veriprint.lm.builder import LmFingerprintConfig, make_lm_fingerprint
    from veriprint.lm.model import LanguageModel, load_lm
    from veriprint.lm.tamper import tamper_lm
    from veriprint.lm.target import LocalCompletions
    from veriprint.lm.verify import verify_lm

    lm = load_lm("fortunes-lm")
    tracemalloc.start()
    t0 = time.perf_counter()
    fp = make_lm_fingerprint(lm, LmFingerprintConfig(prompts=args.prompts, max_tokens=args.max_tokens))
    seconds = time.perf_counter() - t0
    py_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if args.save:
        fp = fp.save(args.save)
    roles = fp.meta["roles"]
    specs = ("top1-token", "logprobs:5")

    tampers = tamper_list()
    rows: list[dict[str, Any]] = []
    for name, cfg in tampers:
        res = tamper_lm(lm, cfg)
        target = LocalCompletions(res.lm, chat=res.system_prompt is not None, system_prompt=res.system_prompt)
        row: dict[str, Any] = {"tamper": name, "changed": res.changed, "total": res.total,
                               "max_abs_change": res.max_abs_change}
        for spec in specs:
            r = verify_lm(fp, target, spec=spec)
            row[spec] = {"verdict": r.verdict, "mismatches": r.mismatches, "compared": r.compared}
            mism_roles = [roles[s.index] for s in r.samples if s.match is False]
            row[spec]["border"] = mism_roles.count("border")
            row[spec]["sensitive"] = mism_roles.count("sensitive")
        rows.append(row)

    sdpa_model = load_lm("fortunes-lm", attn_implementation="sdpa")
    alarms: dict[str, int] = {s: 0 for s in specs}
    checks = 0
    for model in (lm, sdpa_model):
        assert isinstance(model, LanguageModel)
        for b in (1, 2, 4, 8, 16, 32):
            for _ in range(args.repeats):
                checks += 1
                for spec in specs:
                    r = verify_lm(fp, LocalCompletions(model, batch_size=b), spec=spec)
                    alarms[spec] += r.verdict != "INTACT"

    report = {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "prompts": len(fp), "border": roles.count("border"), "sensitive": roles.count("sensitive"),
        "max_tokens": fp.max_tokens, "seconds": round(seconds, 1), "stages": fp.meta["stages"],
        "peak_rss_mib": round(rss / 2**20, 1), "peak_python_mib": round(py_peak / 2**20, 1),
        "floor": fp.noise.floor, "noise": fp.noise.to_dict(), "rows": rows,
        "false_alarm_checks": checks, "false_alarms": alarms, "torchao": torchao_missing() or "installed",
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    print(render(report))
    return 0


def render(rep: dict[str, Any]) -> str:
    """The Markdown report (a pure function of the measured numbers)."""
    lines = [
        f"fingerprint: {rep['prompts']} prompts ({rep['border']} border, {rep['sensitive']} sensitive), "
        f"{rep['max_tokens']} tokens each; made in {rep['seconds']} s (stages: "
        + ", ".join(f"{k} {v} s" for k, v in rep["stages"].items())
        + f"); peak RSS {rep['peak_rss_mib']} MiB, peak Python allocations {rep['peak_python_mib']} MiB; "
        f"floor {rep['floor']:.3g}; {rep['machine']}",
        "",
        "| served | weights changed | top1-token | mismatches (border/sensitive) | logprobs:5 | mismatches (border/sensitive) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rep["rows"]:
        a, b = r["top1-token"], r["logprobs:5"]
        lines.append(f"| {r['tamper']} | {r['changed']:,} / {r['total']:,} | {a['verdict']} | "
                     f"{a['mismatches']} / {a['compared']} ({a['border']}/{a['sensitive']}) | {b['verdict']} | "
                     f"{b['mismatches']} / {b['compared']} ({b['border']}/{b['sensitive']}) |")
    lines += ["", f"false alarms over {rep['false_alarm_checks']} checks of the intact model per spec (batch sizes "
              "1-32, eager and SDPA attention): " + ", ".join(f"{k}: {v}" for k, v in rep["false_alarms"].items())]
    if rep.get("torchao", "installed") != "installed":
        lines.append(f"torchao rows not run: {rep['torchao']}")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
