"""Run a plan on Dask: a local cluster bound to 127.0.0.1, or a scheduler you name.

The plan becomes a task graph (models, pools and attacks are shared dependencies; the
cells are its leaves) submitted to a ``dask.distributed`` client. Finished rows go to the
:class:`~veriprint.evaluate.cache.ResultCache` as they complete, and cells already in the
cache are not submitted at all, so a rerun after an interruption resumes.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from veriprint.evaluate import cells
from veriprint.evaluate.cache import ResultCache
from veriprint.evaluate.coverage import coverage_cell, coverage_key
from veriprint.evaluate.plan import Plan

__all__ = ["RunResult", "plan_rows", "run_plan"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunResult:
    """What a run did.

    Attributes:
        rows: every row of the plan (cached and new), in plan order.
        computed: rows computed in this run.
        cached: rows taken from the cache.
        failures: ``"key: error"`` for every task that raised.
        seconds: wall time of the run.
    """

    rows: list[dict[str, Any]]
    computed: int
    cached: int
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0


@dataclass(frozen=True)
class _Job:
    key: str
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    deps: tuple[str, ...]  # keys of jobs whose results replace these positional placeholders


def _jobs(plan: Plan, out: str | None) -> dict[str, _Job]:
    """Every job of the plan, keyed by its cell key (the graph, before pruning)."""
    jobs: dict[str, _Job] = {}
    for ms in plan.models:
        mk = cells.model_key(ms)
        jobs[mk] = _Job(mk, cells.train_model, (ms,), {"threads": plan.threads, "out": out}, ())
        for method in plan.methods:
            pk = cells.pool_key(plan, ms, method)
            jobs[pk] = _Job(pk, cells.build_pool, (plan, ms, method), {"out": out}, (mk,))
            for variant in plan.variants:
                fk = cells.fp_key(plan, ms, method, variant)
                jobs[fk] = _Job(fk, cells.false_positive_cell, (plan, ms, method, variant), {}, (pk, mk))
    for attack in plan.attacks:
        ms = plan.model(attack.model)
        mk = cells.model_key(ms)
        ak = cells.attack_key(ms, attack)
        jobs[ak] = _Job(ak, cells.run_attack, (plan, attack, ms), {"out": out}, (mk,))
        for method in plan.methods:
            pk = cells.pool_key(plan, ms, method)
            for spec in plan.specs:
                dk = cells.detection_key(plan, ms, attack, method, spec)
                jobs[dk] = _Job(dk, cells.detection_cell, (plan, ms, attack, method, spec), {}, (pk, ak))
    for name in plan.coverage_models:
        ms = plan.model(name)
        ck = coverage_key(plan, ms)
        jobs[ck] = _Job(ck, coverage_cell, (plan, ms), {},
                        (cells.model_key(ms), *(cells.pool_key(plan, ms, m) for m in plan.methods)))
    return jobs


def _row(result: Any) -> dict[str, Any]:
    return result if isinstance(result, dict) else result.row


def plan_rows(plan: Plan, cache: ResultCache) -> list[dict[str, Any]]:
    """The cached rows that belong to ``plan``, in plan order, with the plan's names.

    Rows are keyed by what they compute, not by name, so a renamed attack instance
    reuses its rows; its name and group are taken from the plan here.
    """
    names: dict[str, dict[str, Any]] = {}
    for attack in plan.attacks:
        ms = plan.model(attack.model)
        label = {"attack": attack.name, "group": attack.group, "hides": attack.hides}
        names[cells.attack_key(ms, attack)] = label
        for method in plan.methods:
            for spec in plan.specs:
                names[cells.detection_key(plan, ms, attack, method, spec)] = label
    out = []
    for key in _jobs(plan, None):
        row = cache.get(key)
        if row is not None:
            out.append({**row, **names.get(key, {})})
    return out


def _client(scheduler: str | None, workers: int) -> tuple[Any, Any]:
    from dask.distributed import Client, LocalCluster

    logging.getLogger("distributed").setLevel(logging.WARNING)
    if scheduler:
        return Client(scheduler), None
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                           dashboard_address=None, silence_logs=logging.WARNING)
    return Client(cluster), cluster


def run_plan(
    plan: Plan,
    out: str | os.PathLike[str],
    *,
    scheduler: str | None = None,
    workers: int = 2,
    progress: bool = True,
) -> RunResult:
    """Run every cell of ``plan`` not yet in ``<out>/results.jsonl``.

    Args:
        plan: the :class:`~veriprint.evaluate.plan.Plan`.
        out: output folder (results cache, artifacts).
        scheduler: address of a running Dask scheduler (``tcp://host:8786``); default
            None starts a local cluster on 127.0.0.1.
        workers: worker processes of the local cluster (one thread each).
        progress: show a progress bar.

    Returns:
        A :class:`RunResult`.
    """
    start = time.perf_counter()
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    cache = ResultCache(out_dir / "results.jsonl")
    jobs = _jobs(plan, os.fspath(out_dir.resolve()))
    needed: set[str] = set()

    def need(key: str) -> None:
        if key in needed:
            return
        needed.add(key)
        for dep in jobs[key].deps:
            need(dep)

    for key in jobs:
        if key not in cache:
            need(key)
    cached = len(jobs) - sum(1 for k in needed if k not in cache)
    failures: list[str] = []
    computed = 0
    if needed:
        from dask.distributed import as_completed
        from tqdm.auto import tqdm

        client, cluster = _client(scheduler, workers)
        try:
            futures: dict[str, Any] = {}
            for key, job in jobs.items():  # jobs are in dependency order
                if key not in needed:
                    continue
                deps = [futures[d] for d in job.deps]
                futures[key] = client.submit(job.fn, *job.args, *deps, key=key, pure=False, **job.kwargs)
            log.info("evaluate: %d tasks submitted, %d rows cached", len(futures), cached)
            with tqdm(total=len(futures), desc="evaluate", unit="task", disable=not progress) as bar:
                for fut in as_completed(list(futures.values())):
                    bar.update(1)
                    if fut.status == "error":
                        err = fut.exception()
                        failures.append(f"{fut.key}: {type(err).__name__}: {err}")
                        log.error("task %s failed: %s", fut.key, err)
                        continue
                    cache.put(_row(fut.result()))
                    computed += 1
                    fut.release()
        finally:
            client.close()
            if cluster is not None:
                cluster.close()
    return RunResult(plan_rows(plan, cache), computed, cached, failures, time.perf_counter() - start)
