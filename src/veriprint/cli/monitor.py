"""``veriprint monitor``: watch deployed models on a schedule (history, metrics, alerts, dashboard)."""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys

HELP = "watch deployed models on a schedule, with history, metrics, alerts and a dashboard"

log = logging.getLogger("veriprint.monitor")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="the monitor's TOML file (see docs/guide/monitoring.md)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--once", action="store_true",
                      help="check every endpoint whose current slot has no check yet, deliver alerts, and exit "
                           "0 all INTACT, 1 any TAMPERED, 2 otherwise (for cron or a CronJob)")
    mode.add_argument("--serve-only", action="store_true",
                      help="serve the dashboard and /metrics from the database without checking anything")
    mode.add_argument("--check-config", action="store_true",
                      help="check the configuration and the fingerprints, then exit")
    p.add_argument("--listen", default=None, help="HOST:PORT of the dashboard and /metrics (default: the file's)")


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    from veriprint.redact import RedactingFilter

    try:
        from veriprint.monitor.config import ConfigError, load_config
    except ImportError as e:
        return _fail(f"the monitor needs the monitor extra (pip install 'veriprint[monitor]'): {e}")
    if not logging.getLogger().isEnabledFor(logging.INFO):
        logging.getLogger("veriprint.monitor").setLevel(logging.INFO)
        logging.getLogger().setLevel(logging.WARNING)
    for name in ("veriprint.monitor",):
        lg = logging.getLogger(name)
        if not lg.handlers:
            h = logging.StreamHandler(sys.stderr)
            h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
            h.addFilter(RedactingFilter())
            lg.addHandler(h)
            lg.propagate = False
    try:
        overrides = {"listen": args.listen} if args.listen else {}
        config = load_config(args.config, **overrides)
    except ConfigError as e:
        return _fail(str(e))
    from veriprint.monitor.db import Store, shown_url

    url = config.database_url()
    if args.check_config:  # check the file and what it names; create or change nothing
        return _check_config(config, url)
    try:
        store = Store(url)
    except Exception as e:
        return _fail(f"cannot open the database {shown_url(url)}: {type(e).__name__}: {str(e).splitlines()[0]}")
    from veriprint.monitor.service import Monitor

    try:
        monitor = Monitor(config, store)
    except ValueError as e:
        return _fail(f"{config.source}: {e}")
    if args.once:
        return _once(monitor)
    return _serve(monitor, checks=not args.serve_only)


def _check_config(config, url: str) -> int:  # type: ignore[no-untyped-def]
    """Load every endpoint (fingerprints, signatures, fresh sources, decoys) and parse the
    database URL, without connecting to the database or creating it."""
    from sqlalchemy.engine import make_url

    from veriprint.monitor.checks import EndpointRuntime
    from veriprint.monitor.db import engine_url, shown_url

    try:
        make_url(engine_url(url))
    except Exception as e:
        return _fail(f"{config.source}: the database URL {shown_url(url)} does not parse: {type(e).__name__}")
    for i, endpoint in enumerate(config.endpoints):
        try:
            EndpointRuntime.load(endpoint, f"endpoints[{i}]")
        except ValueError as err:
            return _fail(f"{config.source}: {err}")
    print(f"{config.source}: {len(config.endpoints)} endpoint(s), {len(config.alerts)} alert sink(s), "
          f"database {shown_url(url)}: ok (not opened)")
    return 0


def _once(monitor) -> int:  # type: ignore[no-untyped-def]
    from veriprint.verification.verify import EXIT_CODES

    outcomes = monitor.run_once()
    latest = monitor.store.latest()
    worst = 0
    for name in monitor.runtimes:
        out = next((o for o in outcomes if o.endpoint == name and not o.skipped), None)
        c = latest.get(name)
        if out is not None:
            print(f"{name}: {out.verdict} ({out.reason})")
        elif c is not None and c.started_at >= monitor.started_at:  # made by this run (a timeout)
            print(f"{name}: {c.verdict} ({c.reason})")
        elif c is not None:
            print(f"{name}: {c.verdict} (already checked in this slot, check {c.id}: {c.reason})")
        else:
            print(f"{name}: INCONCLUSIVE (no check stored)")
        verdict = out.verdict if out is not None else (c.verdict if c is not None else "INCONCLUSIVE")
        code = EXIT_CODES.get(verdict, 2)
        worst = 1 if 1 in (worst, code) else max(worst, code)
    pending = monitor.store.pending_alerts()
    if pending:
        print(f"note: {pending} alert(s) not delivered yet; the next run retries them", file=sys.stderr)
    monitor.dispatcher.stop()
    return worst


def _serve(monitor, *, checks: bool) -> int:  # type: ignore[no-untyped-def]
    import uvicorn

    from veriprint.monitor.web import create_app

    config = monitor.config
    # sample images for the classifiers' pool endpoints (a fresh endpoint's checks are made anew,
    # with no file; a language model's prompts are text, shown on the check page itself)
    from veriprint.fingerprint import Fingerprint

    fps = {rt.fingerprint.sha256: rt.fingerprint for rt in monitor.runtimes.values()
           if isinstance(rt.fingerprint, Fingerprint)}
    app = create_app(monitor.store, config, fps, monitor.metrics.registry,
                     health=(lambda: monitor.alive) if checks else None)
    if checks:
        monitor.start()
    log.info("dashboard and /metrics on http://%s:%d/", config.host, config.port)
    server = uvicorn.Server(uvicorn.Config(app, host=config.host, port=config.port, log_level="warning",
                                           access_log=False, lifespan="off"))
    # SIGTERM or SIGINT: stop serving, then let running checks finish and exit 0 (uvicorn's own
    # handlers would re-raise the signal after its shutdown, ending the process before that).
    def stop(signum: int, frame: object) -> None:
        log.info("signal %d: stopping", signum)
        server.should_exit = True

    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign, assignment]
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if checks:
            monitor.stop()
        else:
            monitor.dispatcher.stop()
        monitor.store.close()
    log.info("stopped")
    return 0
