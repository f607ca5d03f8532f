"""The provider as adversary: every provider policy against every way of checking, per zoo model.

    python -m benchmarks.studies.adversary --models fashion-cnn fashion-mlp pretrained-mnist digits-mlp \\
        --json docs/measurements/adversary-runs/ --out docs/measurements/adversary-measured.md
    python -m benchmarks.studies.adversary --render docs/measurements/adversary-runs/*.json --out docs/measurements/adversary-measured.md

A provider (:class:`veriprint.adversary.Provider`) serves the intact model for ``--honest``
checks, then swaps in a tampered copy and keeps answering ``--after`` more checks, with a
policy deciding which rows the intact copy still answers. Between checks it answers natural
traffic (the model's test inputs, ``--traffic`` per check interval), which its stateful
policies keep. The tampered copies: 8-bit per-channel quantization, 2% pruning, 1e-3
relative weight noise, a last-layer fine-tune (lr 1e-5), a BadNets backdoor and BatchNorm
recalibration (models with BatchNorm only).

Ways of checking (the owner's side):

- ``default``: today's default fingerprint (bag 200), whole, in one request, every check;
- ``default+decoys``: the same mixed with as many natural decoys (``DecoyTarget``, seed 0);
- ``monitor pool``: a 32-pair pool, 4 pairs a check, wrapping after 8 checks;
- ``fresh twins`` / ``fresh boundary``: a new check of 16 queries made for every check from
  natural seeds no earlier check used (:class:`veriprint.verification.queries.fresh.FreshQueries`),
  twin pairs or single boundary samples, sent as 4 requests in a keyed order;
- ``default (probs)`` and ``fresh natural (probs)``: under a probability API, the default
  fingerprint and fresh checks made of 16 natural inputs themselves.

Policies: none; replay of honest-phase answers; near-duplicates within 16/255 over all
kept traffic; margin routing at the threshold that flags 1% of natural traffic (on the
served copy); feature squeezing at 5%; the learned detector at 1%; 10% of requests
routed to the tampered copy. For each, the share of natural traffic the provider answered
from the intact copy after the swap (its cost) and, per way of checking, the tampered
copies caught (a TAMPERED check after the swap) and the share of post-swap checks that
were TAMPERED. Beside the table: each detector's ROC on the queries against natural
inputs (true-positive rate at 1% false positives), the margin router's frontier under
top1 (cost against tampers caught, by threshold), the chance that partial routing is
caught within 24 checks, and false alarms over the intact model.
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

import numpy as np
import torch
from torch import nn

from veriprint.adversary import (
    FeatureSqueezing,
    LearnedDetector,
    MarginPolicy,
    NearDuplicatePolicy,
    PartialRouting,
    Policy,
    Provider,
    ReplayPolicy,
    calibrate,
    margins,
    served_logits,
)
from veriprint.adversary.roc import roc, tpr_at
from veriprint.data import Dataset
from veriprint.fingerprint import Fingerprint
from veriprint.targets import QueryBatch
from veriprint.targets.decoys import DecoyTarget
from veriprint.verification.queries.fresh import FreshConfig, FreshQueries
from veriprint.verification.queries.keyed import keyed_permutation
from veriprint.verification.verify import verify

MODEL_NAMES = ("fashion-cnn", "fashion-mlp", "pretrained-mnist", "digits-mlp")
SECRET = b"benchmark-owner-secret-not-for-production"
PER_CHECK = 16
REQUESTS = 4
FPR = 0.01
FRONTIER_QUANTILES = (0.0, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1)


def log(msg: str) -> None:
    print(f"[adversary] {msg}", file=sys.stderr, flush=True)


@dataclass
class Way:
    """A way of checking: its name, spec and the fingerprint (or fingerprints) of each check."""

    name: str
    spec: str
    checks: list[Fingerprint]
    requests: int  # requests per check (1: the whole check in one request)
    decoys: bool = False


def tampered_copies(model: nn.Module, train: Dataset, test: Dataset, quick: bool) -> list[tuple[str, nn.Module]]:
    from veriprint.tamper import (
        BadNetsConfig,
        BnRecalibrateConfig,
        FineTuneConfig,
        PruneConfig,
        QuantizeConfig,
        WeightNoiseConfig,
        tamper,
    )

    side = math.isqrt(int(np.prod(train.x.shape[1:]))) if train.x.ndim == 2 else int(train.x.shape[-1])
    steps = 40 if quick else 200
    cases: list[tuple[str, Any]] = [
        ("8-bit quantization", QuantizeConfig(bits=8, granularity="channel")),
        ("2% pruning", PruneConfig(amount=0.02)),
        ("weight noise 1e-3", WeightNoiseConfig(1e-3)),
        ("last-layer fine-tune", FineTuneConfig(last=1, lr=1e-5, steps=steps)),
        ("backdoor (BadNets)", BadNetsConfig(target=0, size=max(2, min(4, side // 4)), steps=steps)),
    ]
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        cases.append(("BatchNorm recalibration", BnRecalibrateConfig()))
    out = []
    for name, cfg in cases:
        t0 = time.perf_counter()
        res = tamper(model, cfg, data=train, eval_data=test, progress=False)
        out.append((name, res.model.eval()))
        log(f"  tamper {name}: {time.perf_counter() - t0:.1f} s")
    return out


def shuffled(fp: Fingerprint, position: int) -> Fingerprint:
    """The check's samples in an order keyed by the owner's secret and the check."""
    return fp.subset(keyed_permutation(SECRET, len(fp), "order", position).tolist())


def build_ways(model: nn.Module, owner: Dataset, checks: int, quick: bool, horizon: int,
               eps: float | None) -> tuple[list[Way], dict[str, Any]]:
    from veriprint.monitor.pool import Pool
    from veriprint.pipeline import FingerprintConfig, make_fingerprint
    from veriprint.pipeline.generate import GenerationConfig

    info: dict[str, Any] = {}
    bag = 60 if quick else 200
    steps = 50 if quick else 1000
    gen = GenerationConfig(steps=steps) if eps is None else GenerationConfig(steps=steps, eps=eps)
    t0 = time.perf_counter()
    default, _, _ = make_fingerprint(model, owner, FingerprintConfig(bag=bag, generation=gen), progress=False)
    info["default_queries"] = len(default)
    info["default_seconds"] = round(time.perf_counter() - t0, 1)
    log(f"  default fingerprint: {len(default)} queries, {info['default_seconds']} s")
    t0 = time.perf_counter()
    size = 32 if quick else 64
    pool_fp, _, _ = make_fingerprint(model, owner, FingerprintConfig(bag=max(bag, size + 16), select=size,
                                                                      max_queries=size, ceiling_share=0.0,
                                                                      cover_classes=False, generation=gen),
                                     progress=False)
    pool = Pool(pool_fp, 4, "wrap")
    pool_checks = []
    cycle = position = 0
    for _ in range(checks):
        d = pool.draw(cycle, position)
        cycle, position = d.cycle, d.end
        pool_checks.append(pool_fp.subset(d.indices))
    info["pool_units"] = pool.size
    log(f"  pool: {pool.size} units, {time.perf_counter() - t0:.1f} s")
    ways = [Way("default", "top1", [default] * checks, 1), Way("default+decoys", "top1", [default] * checks, 1, True),
            Way("monitor pool", "top1", pool_checks, 1)]
    n = len(owner.x)
    h = horizon if n // horizon >= 2 * PER_CHECK else max(checks, n // (4 * PER_CHECK))
    info["horizon_checks"] = h
    info["owner_inputs"] = n
    fresh_seconds: dict[str, float] = {}
    for kind in ("twins", "boundary", "natural"):
        fq = FreshQueries(model, owner, SECRET, FreshConfig(kind=kind, per_check=PER_CHECK, horizon_checks=h,  # type: ignore[arg-type]
                                                            steps=50 if quick else 200, eps=eps), name="bench")
        t0 = time.perf_counter()
        made = [shuffled(fq.make(p), p) for p in range(checks)]
        fresh_seconds[kind] = (time.perf_counter() - t0) / checks
        info.setdefault("fresh_seeds_per_check", fq.seeds_per_check)
        spec = "probs" if kind == "natural" else "top1"
        ways.append(Way(f"fresh {kind}" + (" (probs)" if kind == "natural" else ""), spec, made, REQUESTS))
        log(f"  fresh {kind}: {fresh_seconds[kind]:.2f} s per check")
    info["fresh_seconds_per_check"] = fresh_seconds
    ways.insert(5, Way("default (probs)", "probs", [default] * checks, 1))
    return ways, info


def make_policies(served: nn.Module, natural: np.ndarray, detector: LearnedDetector | None) -> list[Policy | None]:
    margin = calibrate(MarginPolicy(), natural, served, FPR)
    squeeze = calibrate(FeatureSqueezing(), natural, served, 0.05)
    out: list[Policy | None] = [None, ReplayPolicy(), NearDuplicatePolicy(16 / 255), margin, squeeze]
    if detector is not None:
        out.append(calibrate(detector.bind(served), natural, served, FPR))
    out.append(PartialRouting(0.1, seed=1))
    return out


def policy_key(p: Policy | None) -> str:
    if p is None:
        return "none"
    return {"replay": "replay", "near-duplicate": "near-duplicate 16/255", "margin": "margin @1%",
            "squeeze": "squeezing @5%", "learned": "learned @1%", "partial": "partial 10%"}.get(p.name, p.name)


def simulate(model: nn.Module, served: nn.Module, policy: Policy | None, way: Way, traffic: np.ndarray,
             honest: int, per_interval: int) -> dict[str, Any]:
    """One provider through ``honest`` honest checks and the rest after the swap."""
    if policy is not None:
        policy.reset()
    out = "probs" if way.spec == "probs" else "labels"
    prov = Provider(model, served, policy, output=out, swapped=False)  # type: ignore[arg-type]
    verdicts = []
    natural_rows = natural_routed = 0
    for p, fp in enumerate(way.checks):
        if p == honest:
            prov.swap()
        lo = (p * per_interval) % max(len(traffic) - per_interval, 1)
        before = prov.rows_routed
        prov.max_batch = 16
        prov.query(QueryBatch(traffic[lo: lo + per_interval]))
        if prov.swapped:
            natural_rows += per_interval
            natural_routed += prov.rows_routed - before
        prov.max_batch = max(1, math.ceil(len(fp) / way.requests))
        target: Any = prov
        if way.decoys:
            target = DecoyTarget(prov, traffic, ratio=1.0, seed=0)
        rep = verify(fp, target, spec=way.spec)
        verdicts.append(rep.verdict)
    after = verdicts[honest:]
    return {"tampered": sum(v == "TAMPERED" for v in after), "checks": len(after),
            "inconclusive": sum(v == "INCONCLUSIVE" for v in after),
            "cost": natural_routed / max(natural_rows, 1)}


def request_hits(model: nn.Module, served: nn.Module, way: Way, honest: int) -> list[list[bool]]:
    """Per post-swap check, per request: would the tampered copy answering it be caught?"""
    hits = []
    out = "probs" if way.spec == "probs" else "labels"
    for fp in way.checks[honest:]:
        step = max(1, math.ceil(len(fp) / way.requests))
        row = []
        for lo in range(0, len(fp), step):
            sub = fp.subset(list(range(lo, min(lo + step, len(fp)))))
            rep = verify(sub, Provider(model, served, None, output=out), spec=way.spec)  # type: ignore[arg-type]
            row.append(rep.verdict == "TAMPERED")
        hits.append(row)
    return hits


def caught_within(hits: list[list[bool]], share: float, checks: int) -> float:
    """P(some check among the first ``checks`` is TAMPERED) when each request is answered by
    the tampered copy with probability ``share``, independently."""
    log_miss = sum(math.log1p(-share) for row in hits[:checks] for h in row if h)
    return 1 - math.exp(log_miss)


def frontier(model: nn.Module, served: nn.Module, way: Way, natural: np.ndarray, honest: int) -> list[dict[str, float]]:
    """Margin routing under top1 at each threshold: its cost and whether the tamper is caught."""
    z = served_logits(served, natural)
    m = np.sort(margins(z))
    out = []
    for q in FRONTIER_QUANTILES:
        t = -1.0 if q == 0 else float(np.quantile(m, q))
        pol = MarginPolicy(t)
        cost = float((margins(z) <= t).mean())
        caught = False
        for fp in way.checks[honest:]:
            prov = Provider(model, served, pol, output="labels")
            if verify(fp, prov, spec="top1").verdict == "TAMPERED":
                caught = True
                break
        out.append({"quantile": q, "threshold": t, "cost": cost, "caught": caught})
    return out


def hiding_bound(model: nn.Module, served: nn.Module, way: Way, natural: np.ndarray) -> dict[str, float]:
    """What a margin router needs to hide a tamper from every top1 query.

    A query flips from intact label i to served label j only if the served copy's margin
    m' <= (z'_j - z_j) - (z'_i - z_i) <= 2 max_k |z'_k - z_k|: a router that answers every
    row whose served margin is at most twice the largest logit change from the intact copy
    never lets a flip through. The largest change over the fresh boundary queries and over
    natural traffic, and the share of natural traffic at or below twice each: the
    provider's cost of hiding this tamper from such queries.
    """
    xs = np.concatenate([fp.samples.numpy() for fp in way.checks])
    d_q = float(np.abs(served_logits(served, xs) - served_logits(model, xs)).max())
    d_n = float(np.abs(served_logits(served, natural) - served_logits(model, natural)).max())
    m = margins(served_logits(served, natural))
    return {"delta_queries": d_q, "delta_natural": d_n, "cost_queries": float((m <= 2 * d_q).mean()),
            "cost_natural": float((m <= 2 * d_n).mean())}


def lite2_cost(per_check: int, steps: int) -> dict[str, Any]:
    """Seconds to make one fresh check of EfficientNet-Lite2 (boundary and natural kinds)."""
    from veriprint.data import load_data
    from veriprint.zoo import efficientnet_lite2

    model = efficientnet_lite2().eval()
    data = load_data("imagenet-samples:260")
    out: dict[str, Any] = {"per_check": per_check, "steps": steps, "inputs": len(data.x)}
    for kind in ("boundary", "natural"):
        fq = FreshQueries(model, data, SECRET, FreshConfig(kind=kind, per_check=per_check,  # type: ignore[arg-type]
                                                            horizon_checks=1, seeds_per_check=len(data.x),
                                                            steps=steps, budget="10min"), name="lite2")
        t0 = time.perf_counter()
        fp = fq.make(0)
        out[kind] = {"seconds": round(time.perf_counter() - t0, 1), "queries": len(fp)}
        log(f"Lite2 fresh {kind}: {out[kind]}")
    return out


def attacker_detector(model: nn.Module, attacker: Dataset, natural: np.ndarray, quick: bool) -> LearnedDetector:
    """The provider's own detector: veriprint samples it made from its own inputs, against natural ones."""
    from veriprint.pipeline import FingerprintConfig, make_fingerprint
    from veriprint.pipeline.generate import GenerationConfig

    steps = 50 if quick else 200
    own = []
    for twins in (True, False):
        fp, _, _ = make_fingerprint(model, attacker, FingerprintConfig(
            bag=40 if quick else 120, select=16 if quick else 48, max_queries=48, ceiling_share=0.0,
            cover_classes=False, twins=twins, generation=GenerationConfig(steps=steps)), progress=False)
        own.append(fp.samples.numpy())
    return LearnedDetector().bind(model).fit(np.concatenate(own), natural)


def detector_rocs(model: nn.Module, ways: list[Way], natural: np.ndarray,
                  detector: LearnedDetector) -> dict[str, dict[str, Any]]:
    """Each detector's ROC on each way's queries (scored on the intact copy) against natural inputs."""
    z_nat = served_logits(model, natural)
    sq = FeatureSqueezing().bind(model)
    det: dict[str, Any] = {
        "margin": lambda x, z: -margins(z),
        "squeezing": sq.score,
        "learned": detector.score,
    }
    out: dict[str, dict[str, Any]] = {}
    for name, score in det.items():
        neg = score(natural, z_nat)
        out[name] = {}
        for w in ways:
            if w.name in ("default+decoys", "default (probs)"):
                continue
            xs = np.concatenate([fp.samples.numpy() for fp in _distinct(w.checks)])
            pos = score(xs, served_logits(model, xs))
            r = roc(pos, neg)
            keep = np.unique(np.r_[np.linspace(0, len(r.fpr) - 1, min(len(r.fpr), 200)).astype(int)])
            out[name][w.name] = {"tpr_at_1pct": tpr_at(pos, neg, FPR), "auc": r.auc,
                                 "fpr": r.fpr[keep].round(5).tolist(), "tpr": r.tpr[keep].round(5).tolist()}
    # near-duplicates: the distance of each query to the nearest other query sent before it or with it
    nd = NearDuplicatePolicy(16 / 255)
    neg_d = _nearest_prior(natural)
    out["near-duplicate"] = {}
    for w in ways:
        if w.name in ("default+decoys", "default (probs)"):
            continue
        xs = np.concatenate([fp.samples.numpy() for fp in w.checks])
        pos_d = _nearest_prior(xs)
        out["near-duplicate"][w.name] = {"tpr_at_1pct": tpr_at(-pos_d, -neg_d, FPR),
                                         "flagged_at_16": float((pos_d <= nd.eps).mean()),
                                         "natural_at_16": float((neg_d <= nd.eps).mean())}
    return out


def _distinct(checks: list[Fingerprint]) -> list[Fingerprint]:
    seen: set[int] = set()
    out = []
    for fp in checks:
        if id(fp) not in seen:
            seen.add(id(fp))
            out.append(fp)
    return out


def _nearest_prior(x: np.ndarray) -> np.ndarray:
    """L-inf distance of each row to the nearest earlier row (inf for the first)."""
    from veriprint.adversary.near_duplicate import nearest_linf

    out = np.full(len(x), np.inf)
    for i in range(1, len(x)):
        out[i] = nearest_linf(x[i:i + 1], x[:i])[0]
    return out


def run_model(name: str, args: argparse.Namespace) -> dict[str, Any]:
    from benchmarks.lib.models import joined, load_model

    start = time.perf_counter()
    desc, model, train, test, eps = load_model(name)
    if name in ("fashion-cnn", "fashion-mlp") and not args.quick:
        from veriprint.data import load_data

        train = load_data("fashion-mnist", split="train")  # the owner's inputs: all 60,000
    owner = train if name in ("fashion-cnn", "fashion-mlp") else joined(train, Dataset(test.x[: len(test.x) // 2],
                                                                                       None, test.domain, test.name))
    rest = test.x if owner is train else test.x[len(test.x) // 2:]
    half = len(rest) // 2
    attacker = Dataset(rest[:half], None, test.domain, "attacker's inputs")
    traffic = rest[half:].numpy()
    log(f"{name}: owner {len(owner.x)} inputs, attacker {half}, traffic {len(traffic)}")
    checks = args.honest + args.after
    ways, info = build_ways(model, owner, checks, args.quick, args.horizon, eps)
    tampers = tampered_copies(model, train, test, args.quick)
    t0 = time.perf_counter()
    detector = attacker_detector(model, attacker, attacker.x.numpy(), args.quick)
    log(f"  learned detector: {time.perf_counter() - t0:.1f} s")
    per_interval = max(8, min(args.traffic, len(traffic) // checks))
    result: dict[str, Any] = {"model": name, "description": desc, "info": info, "honest": args.honest,
                              "after": args.after, "traffic_per_check": per_interval, "tampers": [], "rows": []}
    # false alarms: the intact model through every way
    fa = {}
    for w in ways:
        r = simulate(model, model, None, w, traffic, 0, per_interval)
        fa[w.name] = {"tampered": r["tampered"], "checks": r["checks"]}
    result["false_alarms"] = fa
    log(f"  false alarms: {sum(v['tampered'] for v in fa.values())} TAMPERED of {sum(v['checks'] for v in fa.values())}")
    for tname, served in tampers:
        t0 = time.perf_counter()
        result["tampers"].append(tname)
        for pol in make_policies(served, traffic, detector):
            for w in ways:
                r = simulate(model, served, pol, w, traffic, args.honest, per_interval)
                result["rows"].append({"tamper": tname, "policy": policy_key(pol), "way": w.name, **r})
        fresh = {w.name: w for w in ways}
        result.setdefault("partial", {})[tname] = {
            wn: {s: caught_within(request_hits(model, served, fresh[wn], args.honest), s, 24)
                 for s in (0.05, 0.1, 0.2)}
            for wn in ("default", "fresh boundary", "fresh natural (probs)")}
        result.setdefault("frontier", {})[tname] = {
            wn: frontier(model, served, fresh[wn], traffic, args.honest) for wn in ("fresh boundary", "fresh twins")}
        result.setdefault("bound", {})[tname] = hiding_bound(model, served, fresh["fresh boundary"], traffic)
        log(f"  {tname}: {time.perf_counter() - t0:.1f} s")
    result["roc"] = detector_rocs(model, ways, traffic, detector)
    result["seconds"] = round(time.perf_counter() - start, 1)
    return result


# ---------------------------------------------------------------- rendering


def caught_table(res: dict[str, Any]) -> tuple[list[str], list[str], dict[tuple[str, str], dict[str, Any]]]:
    ways: list[str] = []
    policies: list[str] = []
    cells: dict[tuple[str, str], dict[str, Any]] = {}
    for r in res["rows"]:
        if r["way"] not in ways:
            ways.append(r["way"])
        if r["policy"] not in policies:
            policies.append(r["policy"])
        c = cells.setdefault((r["policy"], r["way"]), {"caught": 0, "n": 0, "checks": 0, "tampered": 0, "cost": []})
        c["n"] += 1
        c["caught"] += r["tampered"] > 0
        c["checks"] += r["checks"]
        c["tampered"] += r["tampered"]
        c["cost"].append(r["cost"])
    return ways, policies, cells


def render_model(res: dict[str, Any], png: Path | None) -> str:
    ways, policies, cells = caught_table(res)
    info = res["info"]
    n_t = len(res["tampers"])
    lines = [f"## {res['model']}: {res['description']}", ""]
    lines.append(f"{n_t} tampered copies ({', '.join(res['tampers'])}); {res['honest']} honest checks, then "
                 f"{res['after']} after the swap; {res['traffic_per_check']} natural inputs of traffic per check "
                 f"interval; the default fingerprint has {info['default_queries']} queries, fresh checks "
                 f"{PER_CHECK} (seeds from slices of {info['fresh_seeds_per_check']} of the owner's "
                 f"{info['owner_inputs']} inputs, {info['horizon_checks']} checks before a seed would repeat). "
                 f"Run: {res['seconds'] / 60:.1f} min.")
    lines.append("")
    lines.append("Tampers caught (a TAMPERED check after the swap) / share of post-swap checks TAMPERED; "
                 "cost: the share of natural traffic the provider answered from the intact copy after the swap.")
    lines.append("")
    lines.append("| policy | cost | " + " | ".join(ways) + " |")
    lines.append("|---|---|" + "---|" * len(ways))
    for p in policies:
        costs = [c for w in ways for c in cells[(p, w)]["cost"]]
        row = [p, f"{100 * float(np.mean(costs)):.2f}%"]
        for w in ways:
            c = cells[(p, w)]
            row.append(f"{c['caught']}/{c['n']} ({100 * c['tampered'] / max(c['checks'], 1):.0f}%)")
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    fa = res["false_alarms"]
    lines.append(f"False alarms over the intact model: {sum(v['tampered'] for v in fa.values())} TAMPERED checks of "
                 f"{sum(v['checks'] for v in fa.values())} (every way of checking, {len(fa)} ways).")
    lines.append("")
    lines.append("Detectors' true-positive rate on the queries at the threshold that flags 1% of natural inputs "
                 "(ROC AUC in brackets; near-duplicates: the share of queries within 16/255 of an earlier one, "
                 "against the share of natural inputs):")
    lines.append("")
    rw = [w for w in ways if w not in ("default+decoys", "default (probs)")]
    lines.append("| detector | " + " | ".join(rw) + " |")
    lines.append("|---|" + "---|" * len(rw))
    for det, per in res["roc"].items():
        row = [det]
        for w in rw:
            v = per.get(w)
            if v is None:
                row.append("")
            elif "auc" in v:
                row.append(f"{100 * v['tpr_at_1pct']:.0f}% ({v['auc']:.2f})")
            else:
                row.append(f"{100 * v['flagged_at_16']:.0f}% (natural {100 * v['natural_at_16']:.1f}%)")
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    lines.append("Margin routing under top1, by threshold (its quantile of natural margins on the served copy): "
                 "the provider's cost and the tampered copies still caught by fresh boundary / fresh twin checks:")
    lines.append("")
    qs = FRONTIER_QUANTILES
    lines.append("| threshold quantile | " + " | ".join(f"{100 * q:g}%" for q in qs) + " |")
    lines.append("|---|" + "---|" * len(qs))
    for wn in ("fresh boundary", "fresh twins"):
        caught = [sum(res["frontier"][t][wn][i]["caught"] for t in res["tampers"]) for i in range(len(qs))]
        lines.append(f"| {wn}: caught | " + " | ".join(f"{c}/{n_t}" for c in caught) + " |")
    costs = [float(np.mean([res["frontier"][t]["fresh boundary"][i]["cost"] for t in res["tampers"]]))
             for i in range(len(qs))]
    lines.append("| provider cost | " + " | ".join(f"{100 * c:.2f}%" for c in costs) + " |")
    if "bound" in res:
        lines.append("")
        lines.append("What hiding each tampered copy from every top1 query takes (a flip needs the served margin to be "
                     "at most twice the largest logit change, so a router at that threshold lets none through): the "
                     "largest logit change over the fresh boundary queries and over natural traffic, and the share "
                     "of natural traffic such a router answers from the intact copy:")
        lines.append("")
        lines.append("| tampered copy | largest change, queries | cost to hide from them | largest change, natural | "
                     "cost to hide from natural inputs |")
        lines.append("|---|---|---|---|---|")
        for t in res["tampers"]:
            b = res["bound"][t]
            lines.append(f"| {t} | {b['delta_queries']:.3g} | {100 * b['cost_queries']:.2f}% | {b['delta_natural']:.3g} | "
                         f"{100 * b['cost_natural']:.2f}% |")
    half = _evade_half_cost(res)
    lines.append("")
    lines.append(f"To evade half the tampered copies under top1 (fresh boundary checks) the margin router must answer "
                 f"{'at least ' + format(100 * half, '.2f') + '%' if half is not None else 'more than 10%'} of natural "
                 f"traffic from the intact copy.")
    lines.append("")
    lines.append("Partial routing: the chance that some check within 24 is TAMPERED when each request goes to the "
                 "tampered copy with probability 5% / 10% / 20% (exact, from which requests would be caught):")
    lines.append("")
    lines.append("| tampered copy | default (1 request) | fresh boundary (4 requests) | fresh natural, probs (4 requests) |")
    lines.append("|---|---|---|---|")
    for t in res["tampers"]:
        p = res["partial"][t]
        lines.append(f"| {t} | " + " | ".join(
            " / ".join(f"{100 * p[w][str(s)] if str(s) in p[w] else 100 * p[w][s]:.1f}%" for s in (0.05, 0.1, 0.2))
            for w in ("default", "fresh boundary", "fresh natural (probs)")) + " |")
    lines.append("")
    fs = info["fresh_seconds_per_check"]
    lines.append("Cost of fresh checks on a 2-core CPU: " + ", ".join(
        f"{k} {v:.2f} s per check ({24 * v / 60:.1f} min a day at the hourly default)" for k, v in fs.items()) + ".")
    if png is not None:
        lines += ["", f"![ROC curves, {res['model']}]({png.name})"]
    lines.append("")
    return "\n".join(lines)


def _evade_half_cost(res: dict[str, Any]) -> float | None:
    n_t = len(res["tampers"])
    for i, _ in enumerate(FRONTIER_QUANTILES):
        caught = sum(res["frontier"][t]["fresh boundary"][i]["caught"] for t in res["tampers"])
        if caught <= n_t // 2:
            return float(np.mean([res["frontier"][t]["fresh boundary"][i]["cost"] for t in res["tampers"]]))
    return None


def plot(res: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dets = [d for d in res["roc"] if d != "near-duplicate"]
    fig, axes = plt.subplots(1, len(dets) + 1, figsize=(4.2 * (len(dets) + 1), 3.8))
    for ax, d in zip(axes, dets, strict=False):
        for w, v in res["roc"][d].items():
            ax.plot(v["fpr"], v["tpr"], label=f"{w} ({100 * v['tpr_at_1pct']:.0f}% at 1%)")
        ax.axvline(FPR, color="grey", lw=0.6, ls=":")
        ax.set_xscale("symlog", linthresh=1e-3)
        ax.set_xlim(0, 1)
        ax.set_title(f"{d} detector")
        ax.set_xlabel("natural inputs flagged")
        ax.set_ylabel("queries flagged")
        ax.legend(fontsize=6)
    ax = axes[-1]
    n_t = len(res["tampers"])
    for wn in ("fresh boundary", "fresh twins"):
        costs = [np.mean([res["frontier"][t][wn][i]["cost"] for t in res["tampers"]])
                 for i in range(len(FRONTIER_QUANTILES))]
        caught = [sum(res["frontier"][t][wn][i]["caught"] for t in res["tampers"]) for i in range(len(FRONTIER_QUANTILES))]
        ax.step(np.array(costs) * 100, caught, where="post", marker="o", label=wn)
    ax.set_xscale("symlog", linthresh=0.05)
    ax.set_xlim(0, 100)
    ax.set_ylim(-0.2, n_t + 0.2)
    ax.set_xlabel("natural traffic answered honestly (%)")
    ax.set_ylabel(f"tampered copies caught (of {n_t})")
    ax.set_title("margin routing, top1")
    ax.legend(fontsize=7)
    fig.suptitle(f"{res['model']}: detectors on the queries, and the margin router's frontier")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def render(results: list[dict[str, Any]], command: str, base: Path | None) -> str:
    parts = ["# The provider as adversary: measured", "",
             "Made by `" + command + "` (`benchmarks/studies/adversary.py`; its docstring says what each "
             "column is). The threat model and what each way of checking promises are in "
             "[adversary.md](adversary.md) and [security.md](security.md).", ""]
    for res in results:
        png = None
        if base is not None:
            png = base / f"adversary-{res['model']}.png"
            plot(res, png)
        parts.append(render_model(res, png))
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(MODEL_NAMES), choices=MODEL_NAMES)
    ap.add_argument("--honest", type=int, default=8, help="checks before the swap (default 8)")
    ap.add_argument("--after", type=int, default=24, help="checks after the swap (default 24)")
    ap.add_argument("--traffic", type=int, default=48, help="natural inputs the provider answers per interval")
    ap.add_argument("--horizon", type=int, default=720, help="checks the owner's seeds must last (default 720)")
    ap.add_argument("--quick", action="store_true", help="small sizes (the tests' mode)")
    ap.add_argument("--json", type=Path, default=None, help="folder for one JSON file per model")
    ap.add_argument("--out", type=Path, default=None, help="Markdown report (default: stdout)")
    ap.add_argument("--render", nargs="*", type=Path, default=None, help="render stored JSON runs only")
    ap.add_argument("--lite2-cost", action="store_true",
                    help="only time one fresh check of EfficientNet-Lite2 (JSON to stdout)")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    if args.lite2_cost:
        print(json.dumps(lite2_cost(8, 10 if args.quick else 50), indent=1))
        return 0
    if args.render:
        results = [json.loads(p.read_text()) for p in args.render]
        command = results[0].get("command", "python -m benchmarks.studies.adversary")
    else:
        command = "python -m benchmarks.studies.adversary " + " ".join(argv if argv is not None else sys.argv[1:])
        results = []
        for name in args.models:
            res = run_model(name, args)
            res["command"] = command
            results.append(res)
            if args.json is not None:
                args.json.mkdir(parents=True, exist_ok=True)
                (args.json / f"{name}.json").write_text(json.dumps(res, indent=1, default=float))
    text = render(results, command, None if args.out is None else args.out.parent)
    if args.out is None:
        sys.stdout.write(text)
    else:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
