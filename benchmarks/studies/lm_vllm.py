"""False alarms of an LM fingerprint on a real server: the shipped ``fortunes-lm`` behind vLLM.

Usage (from the repository root, after ``bash scripts/setup-lm-serving.sh``)::

    PYTHONPATH=src .venv/bin/python -m benchmarks.studies.lm_vllm [--checks 1000] [--fingerprint FP.vpf]
        [--json FILE] [--out FILE.md]

1. Makes the default LM fingerprint of the shipped model (or reads ``--fingerprint``).
2. Starts vLLM's CPU build on 127.0.0.1 serving the shipped model folder as it is.
3. Runs ``--checks`` checks of the intact server, cycling through the specs
   ``top1-token``, ``logprobs:5`` and ``text``, request sizes 1, 2, 4, 8, 16 and 32
   prompts, and 1 or 4 requests in flight at once; counts every verdict other than INTACT.
4. Serves the sibling checkpoint instead and checks it once per spec (each must be TAMPERED).

Prints a Markdown report (``--out`` writes it) and the rows as JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from testkit.servers.openai_server import OpenAIServer
from veriprint.lm.builder import LmFingerprintConfig, make_lm_fingerprint
from veriprint.lm.fingerprint import LmFingerprint
from veriprint.lm.model import ASSETS, load_lm
from veriprint.lm.verify import verify_lm
from veriprint.targets.http import HttpOptions
from veriprint.targets.openai import OpenAICompletions

SPECS = ("top1-token", "logprobs:5", "text")
SIZES = (1, 2, 4, 8, 16, 32)
WORKERS = (1, 4)
OPTIONS = HttpOptions(timeout=120, retries=0)


def _serve(name: str, root: Path) -> OpenAIServer:
    folder = root / name
    shutil.copytree(ASSETS / name, folder)
    return OpenAIServer(folder, "fortunes-lm", log=root / f"{name}.log")


def run(checks: int, fp: LmFingerprint, root: Path) -> dict[str, Any]:
    ways = list(itertools.product(SPECS, SIZES, WORKERS))
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    with _serve("fortunes-lm", root) as server:
        started = time.perf_counter() - t0
        t1 = time.perf_counter()
        for i in range(checks):
            spec, size, workers = ways[i % len(ways)]
            target = OpenAICompletions(server.base_url, "fortunes-lm", options=OPTIONS, max_batch=size,
                                       workers=workers)
            r = verify_lm(fp, target, spec=spec)
            rows.append({"check": i, "spec": spec, "max_batch": size, "workers": workers, "verdict": r.verdict,
                         "reason": r.reason})
            if (i + 1) % 100 == 0:
                print(f"  {i + 1}/{checks} checks, {sum(x['verdict'] != 'INTACT' for x in rows)} not INTACT",
                      file=sys.stderr, flush=True)
        intact_s = time.perf_counter() - t1
    sibling: dict[str, str] = {}
    with _serve("fortunes-lm-sibling", root) as server:
        for spec in SPECS:
            target = OpenAICompletions(server.base_url, "fortunes-lm", options=OPTIONS, max_batch=8)
            sibling[spec] = verify_lm(fp, target, spec=spec).verdict
    return {"checks": rows, "sibling": sibling, "server_start_s": started, "intact_s": intact_s,
            "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, python {platform.python_version()}"}


def render(res: dict[str, Any], command: str, prompts: int, tokens: int) -> str:
    rows = res["checks"]
    bad = [r for r in rows if r["verdict"] != "INTACT"]
    lines = ["# Language-model checks through a real vLLM server (measured)", "",
             f"Made by `{command}` on {res['machine']}. The default fingerprint of the shipped "
             f"`fortunes-lm` ({prompts} prompts, at most {tokens} generated tokens each), checked "
             "through `/v1/completions` of vLLM's CPU build serving the shipped folder as it is.", "",
             f"**{len(rows)} checks of the intact server, {len(bad)} not INTACT** "
             f"({res['intact_s']:.0f} s, after a server start of {res['server_start_s']:.0f} s).", "",
             "| spec | prompts per request | requests in flight | checks | INTACT |", "|---|---|---|---|---|"]
    for spec, size, workers in itertools.product(SPECS, SIZES, WORKERS):
        got = [r for r in rows if (r["spec"], r["max_batch"], r["workers"]) == (spec, size, workers)]
        if got:
            lines.append(f"| {spec} | {size} | {workers} | {len(got)} | "
                         f"{sum(r['verdict'] == 'INTACT' for r in got)} |")
    lines += ["", "The sibling checkpoint (the same run stopped at step 1,200 of 1,600) served the same way: "
              + ", ".join(f"{s} {v}" for s, v in res["sibling"].items()) + "."]
    for r in bad[:10]:
        lines.append(f"- check {r['check']} ({r['spec']}, {r['max_batch']} per request, {r['workers']} in "
                     f"flight): {r['verdict']}: {r['reason']}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checks", type=int, default=1000)
    p.add_argument("--fingerprint", default=None, help="an LM fingerprint of fortunes-lm (default: make one)")
    p.add_argument("--json", default=None)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if args.fingerprint:
        fp = LmFingerprint.load(args.fingerprint)
    else:
        t = time.perf_counter()
        fp = make_lm_fingerprint(load_lm("fortunes-lm"), LmFingerprintConfig())
        print(f"fingerprint: {len(fp)} prompts in {time.perf_counter() - t:.0f} s",
              file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="veriprint-lm-vllm-") as d:
        res = run(args.checks, fp, Path(d))
    cfg = LmFingerprintConfig()
    text = render(res, "python -m benchmarks.studies.lm_vllm " + " ".join(argv if argv is not None else sys.argv[1:]),
                  cfg.prompts, cfg.max_tokens)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    return 0 if all(r["verdict"] == "INTACT" for r in res["checks"]) and all(
        v == "TAMPERED" for v in res["sibling"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
