"""Watch deployed models over time: scheduled checks, history, metrics, alerts, a dashboard.

``veriprint monitor --config monitor.toml`` runs :class:`~veriprint.monitor.service.Monitor`
with its dashboard (:mod:`veriprint.monitor.web`); ``--once`` checks every endpoint once,
for cron or a Kubernetes CronJob. The parts:

* :mod:`~veriprint.monitor.config`: the TOML file, checked whole at start;
* :mod:`~veriprint.monitor.db`: SQLAlchemy models, Alembic migrations, crash-safe writes;
* :mod:`~veriprint.monitor.pool`: query rotation over a large fingerprint;
* :mod:`~veriprint.monitor.checks`: one check of one endpoint;
* :mod:`~veriprint.monitor.service`: the scheduler;
* :mod:`~veriprint.monitor.metrics`: Prometheus metrics;
* :mod:`~veriprint.monitor.alerts`: webhook delivery.

Needs the ``monitor`` extra: ``pip install 'veriprint[monitor]'``. See docs/guide/monitoring.md.
"""

from __future__ import annotations

__all__ = ["ConfigError", "MonitorConfig", "load_config"]

from veriprint.monitor.config import ConfigError, MonitorConfig, load_config
