"""The dashboard and ``/metrics``: a small server-rendered Starlette app (Jinja2 templates).

Pages: ``/`` (every endpoint and its state, with a short verdict strip), ``/endpoints/NAME``
(verdict timeline as inline SVG, recent checks and alerts), ``/checks/ID`` (one check:
which samples flipped, with each seed and sample image side by side, or for a language
model each prompt with its expected and answered tokens; and its alerts with their delivery
attempts), ``/alerts``. ``/metrics`` is Prometheus' text format;
``/healthz`` answers 200 while the scheduler runs; ``/api/endpoints`` and
``/api/checks/ID`` give the same data as JSON. Nothing needs a build step or JavaScript.
The dashboard has no login: it binds 127.0.0.1 by default and shows no secrets; put it
behind your proxy's authentication to expose it.

Every handler is a plain function: the database layer (SQLAlchemy) blocks, so Starlette runs
each request in its thread pool and a slow query never stalls the event loop that serves
``/healthz`` and ``/metrics``. A page reads a fixed number of queries whatever the number
of endpoints or alerts (the verdict strips in one windowed query, the alerts' delivery
attempts in another).
"""

from __future__ import annotations

import datetime as dt
import io
import math
import time as _clock
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.templating import Jinja2Templates

from veriprint.fingerprint import Fingerprint
from veriprint.monitor.db import Check, Store

__all__ = ["create_app", "sample_png"]

TEMPLATES = Path(__file__).with_name("templates")
COLORS = {"INTACT": "#2e7d32", "TAMPERED": "#c62828", "INCONCLUSIVE": "#f9a825"}


def _time(t: float | None) -> str:
    if t is None:
        return "never"
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _ago(t: float | None, now: float) -> str:
    if t is None:
        return ""
    s = max(0.0, now - t)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s / size:.0f}{unit} ago"
    return f"{s:.0f}s ago"


def sample_png(fp: Fingerprint, index: int, which: str, scale: int = 8) -> bytes:
    """A PNG of one sample (``which="sample"``) or its natural seed (``"seed"``)."""
    from PIL import Image

    t = (fp.samples if which == "sample" else fp.seeds)[index].float().numpy()
    d = fp.domain
    x = np.clip((t - d.lo) / max(d.hi - d.lo, 1e-12), 0, 1)
    if x.ndim == 1:
        side = math.isqrt(x.size)
        x = x.reshape(side, side) if side * side == x.size else x.reshape(1, -1)
    elif x.ndim == 3:
        x = x[0] if x.shape[0] == 1 else np.moveaxis(x[:3], 0, -1)
    img = Image.fromarray((x * 255).round().astype(np.uint8))
    img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def probe_text(name: str, c: Check | None, now: float | None = None) -> str:
    """The Prometheus text a probe of endpoint ``name`` answers (its newest check ``c``)."""
    now = _clock.time() if now is None else now
    lines = ["# HELP probe_success 1 when the endpoint's newest check is INTACT",
             "# TYPE probe_success gauge", f"probe_success {1 if c is not None and c.verdict == 'INTACT' else 0}"]
    if c is not None:
        lines += ["# HELP probe_duration_seconds wall time of that check", "# TYPE probe_duration_seconds gauge",
                  f"probe_duration_seconds {c.duration_s:.6g}",
                  "# HELP veriprint_probe_check_age_seconds seconds since that check finished",
                  "# TYPE veriprint_probe_check_age_seconds gauge",
                  f"veriprint_probe_check_age_seconds {max(now - c.finished_at, 0.0):.3f}"]
    lines += ["# HELP veriprint_probe_verdict 1 for the newest check's verdict", "# TYPE veriprint_probe_verdict gauge"]
    for v in ("INTACT", "TAMPERED", "INCONCLUSIVE"):
        lines.append(f'veriprint_probe_verdict{{endpoint="{name}",verdict="{v}"}} '
                     f"{1 if c is not None and c.verdict == v else 0}")
    return "\n".join(lines) + "\n"


#: Check ids are database integers (64-bit signed): anything larger names no check.
_MAX_ID = 2**63 - 1


def _check_or_404(store: Store, raw: object) -> Check:
    """The check with id ``raw``, or HTTP 404 (ids out of the database's range included)."""
    cid = int(str(raw)) if str(raw).isdigit() else -1
    c = store.check(cid) if 0 < cid <= _MAX_ID else None
    if c is None:
        raise HTTPException(404, "no such check")
    return c


def _labels_first(spec: str) -> bool:
    """Whether a stored answer under ``spec`` starts with the label (top1, topk, top1-prob)
    rather than being a vector of scores (probs, logits)."""
    from veriprint.verification.specs import parse_spec

    try:
        return parse_spec(spec).kind in ("top1", "topk", "top1-prob")
    except Exception:
        return False


def _label(values: list[float] | None, labels_first: bool) -> int | None:
    """The label an answer stored with a check says (None when there was none)."""
    if not values:
        return None
    return int(values[0]) if labels_first else int(np.argmax(values))


def _is_lm_check(c: Check) -> bool:
    """Whether ``c`` checked a language model (its spec is a language model's, or its
    samples hold prompts)."""
    from veriprint.lm.specs import parse_lm_spec

    try:
        parse_lm_spec(c.spec)
        return True
    except Exception:
        return any(isinstance(s, dict) and "prompt" in s for s in c.samples or ())


def shown_answer(v: Any) -> str:
    """A language model's stored answer as one line: tokens quoted and separated, text
    quoted, top logprobs as ``token logprob`` per generated token (steps split by ``/``)."""
    if v is None:
        return "not answered"
    if isinstance(v, str):
        return repr(v)
    if isinstance(v, list) and all(isinstance(x, dict) for x in v):
        return " / ".join(", ".join(f"{t!r} {lp:.4g}" if isinstance(lp, int | float) else f"{t!r}"
                                    for t, lp in step.items()) for step in v)
    if isinstance(v, list):
        return " ".join(repr(x) if isinstance(x, str) else str(x) for x in v)
    return str(v)


def timeline_svg(checks: list[Check], width: int = 900, height: int = 36) -> str:
    """Oldest left to newest right: one bar per check, coloured by verdict, linking to it."""
    checks = sorted(checks, key=lambda c: c.slot)
    if not checks:
        return f'<svg class="timeline" width="{width}" height="{height}" role="img" aria-label="no checks yet"></svg>'
    w = max(2.0, min(24.0, width / len(checks)))
    parts = [f'<svg class="timeline" width="{w * len(checks):.0f}" height="{height}" role="img" '
             f'aria-label="verdict timeline">']
    for i, c in enumerate(checks):
        parts.append(
            f'<a href="/checks/{c.id}"><rect class="bar {c.verdict.lower()}" data-verdict="{c.verdict}" '
            f'x="{i * w:.1f}" y="0" width="{max(w - 1, 1):.1f}" height="{height}" fill="{COLORS[c.verdict]}">'
            f'<title>{_time(c.finished_at)}: {c.verdict}</title></rect></a>')
    parts.append("</svg>")
    return "".join(parts)


def create_app(store: Store, config: Any, fingerprints: dict[str, Any], metrics_registry: Any = None,
               health: Any = None) -> Starlette:
    """The dashboard app.

    Args:
        store: the database.
        config: the :class:`~veriprint.monitor.config.MonitorConfig`.
        fingerprints: loaded classifiers' fingerprints by SHA-256 (for the sample images; a
            language model's has none).
        metrics_registry: the Prometheus registry served at ``/metrics``.
        health: a callable returning True while the scheduler runs (default: always).
    """
    templates = Jinja2Templates(directory=str(TEMPLATES))
    templates.env.globals.update(time=_time, colors=COLORS, refresh=config.refresh)
    names = [e.name for e in config.endpoints]

    def endpoint_rows() -> list[dict[str, Any]]:
        now = _clock.time()
        latest = store.latest()
        conclusive = store.last_conclusive()
        recent = store.recent(40)
        rows = []
        for e in config.endpoints:
            c = latest.get(e.name)
            rows.append({
                "name": e.name, "target": e.shown_target, "spec": e.spec, "interval": e.interval,
                "verdict": c.verdict if c else "NONE", "reason": c.reason if c else "no check yet",
                "last": _time(c.finished_at) if c else "never", "ago": _ago(c.finished_at if c else None, now),
                "last_conclusive": _time(conclusive.get(e.name)),
                "streak": c.consecutive_inconclusive if c else 0,
                "pool_left": None if c is None else c.pool_checks_left, "warn": _warn_below(e, c),
                "evidence": None if c is None or not c.sequential else c.sequential.get("evidence"),
                "share_lower": None if c is None or not c.sequential else c.sequential.get("share_lower"),
                "check_id": c.id if c else None,
                "strip": timeline_svg(recent.get(e.name, []), width=240, height=16),
            })
        return rows

    def with_attempts(alerts: list[Any]) -> list[tuple[Any, list[Any]]]:
        attempts = store.attempts_of([a.id for a in alerts])
        return [(a, attempts.get(a.id, [])) for a in alerts]

    def _warn_below(e: Any, c: Any) -> int:
        """The pool size below which the page warns: the configured one, else whenever the
        endpoint's last check warned of its pool (the default depends on the pool's size)."""
        if e.pool_warn_checks is not None:
            return int(e.pool_warn_checks)
        if c is not None and c.pool_checks_left is not None and any(
                str(w).startswith("query pool") for w in c.warnings or ()):
            return int(c.pool_checks_left) + 1
        return 0

    def index(request: Request) -> Response:
        return templates.TemplateResponse(request, "index.html", {"endpoints": endpoint_rows()})

    def endpoint(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in names:
            raise HTTPException(404, f"no endpoint named {name!r}")
        checks = store.checks(name, limit=200)
        cfg = config.endpoint(name)
        return templates.TemplateResponse(request, "endpoint.html", {
            "e": cfg, "checks": checks, "timeline": timeline_svg(checks), "alerts": store.alerts(endpoint=name),
            "row": next(r for r in endpoint_rows() if r["name"] == name)})

    def check(request: Request) -> Response:
        c = _check_or_404(store, request.path_params["id"])
        alerts = with_attempts(store.alerts(check_id=c.id))
        if _is_lm_check(c):
            prompts = [{**s, "expected_shown": shown_answer(s.get("expected")),
                        "observed_shown": shown_answer(s.get("observed")), "flipped": s.get("match") is False}
                       for s in c.samples]
            return templates.TemplateResponse(request, "check.html", {
                "c": c, "lm": True, "samples": prompts, "alerts": alerts, "images": False})
        samples = []
        labels_first = _labels_first(c.spec)
        for s in c.samples:
            exp, obs = s.get("expected") or [], s.get("observed")
            # a sample never compared is stored with the intact model's scores, whatever the spec
            first = labels_first and s.get("match") is not None
            samples.append({**s, "expected_label": _label(exp, first),
                            "observed_label": _label(obs, first), "flipped": s.get("match") is False})
        return templates.TemplateResponse(request, "check.html", {
            "c": c, "lm": False, "samples": samples, "alerts": alerts, "images": c.fingerprint_sha256 in fingerprints})

    def alerts(request: Request) -> Response:
        return templates.TemplateResponse(request, "alerts.html", {
            "alerts": with_attempts(store.alerts(limit=200))})

    def image(request: Request) -> Response:
        fp = fingerprints.get(request.path_params["sha"])
        which = request.path_params["which"]
        index = int(request.path_params["index"])
        if not isinstance(fp, Fingerprint) or which not in ("seed", "sample") or not 0 <= index < len(fp):
            raise HTTPException(404, "no such image")
        return Response(sample_png(fp, index, which), media_type="image/png",
                        headers={"Cache-Control": "max-age=86400"})

    def metrics(request: Request) -> Response:
        if metrics_registry is None:
            return PlainTextResponse("", status_code=404)
        return Response(generate_latest(metrics_registry), media_type=CONTENT_TYPE_LATEST)

    def healthz(request: Request) -> Response:
        ok = True if health is None else bool(health())
        return JSONResponse({"status": "ok" if ok else "scheduler stalled"}, status_code=200 if ok else 503)

    def api_endpoints(request: Request) -> Response:
        rows = endpoint_rows()
        for r in rows:
            r.pop("strip")
        return JSONResponse(rows)

    def api_check(request: Request) -> Response:
        c = _check_or_404(store, request.path_params["id"])
        return JSONResponse({col.name: getattr(c, col.name) for col in Check.__table__.columns})

    def probe(request: Request) -> Response:
        """``/probe?target=NAME`` in the style of Prometheus' blackbox exporter: the endpoint's
        newest stored check as ``probe_success`` and friends. It reads the database only, so a
        scrape never sends a query (the schedule and ``queries_per_day`` stay the monitor's)."""
        name = request.query_params.get("target", "")
        if name not in names:
            return PlainTextResponse(f"expected ?target= one of the endpoints ({', '.join(names)}), got {name!r:.80}\n",
                                     status_code=400)
        return Response(probe_text(name, store.latest().get(name)), media_type=CONTENT_TYPE_LATEST)

    routes = [
        Route("/probe", probe),
        Route("/", index), Route("/endpoints/{name}", endpoint), Route("/checks/{id:int}", check),
        Route("/alerts", alerts), Route("/fingerprints/{sha}/{index:int}/{which}.png", image),
        Route("/metrics", metrics), Route("/healthz", healthz), Route("/api/endpoints", api_endpoints),
        Route("/api/checks/{id:int}", api_check),
    ]
    return Starlette(routes=routes)
