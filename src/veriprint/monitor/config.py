"""The monitor's configuration: one TOML file, checked completely before anything starts.

Layout (every key is optional unless marked required)::

    version = 1                           # the file's format; a newer one than this veriprint's is refused

    [monitor]
    database = "sqlite:///monitor.db"    # or database_env = "VAR" holding a PostgreSQL URL
    secret = "schedule.key"               # or secret_env = "VAR" holding its path: keys every draw
    listen = "127.0.0.1:9108"             # dashboard and /metrics
    concurrency = 8                       # checks in flight at once, all endpoints together
    public_url = ""                       # dashboard address put in alerts (default: none)

    [defaults]                            # any endpoint key, applied where an endpoint omits it
    interval = "1h"

    [[alerts]]                            # webhooks
    name = "oncall"                       # required
    format = "slack"                      # "json" (default) or "slack"
    url_env = "SLACK_WEBHOOK_URL"         # or url = "http://..." (no secrets in the file)

    [[endpoints]]
    name = "cnn-prod"                     # required: letters, digits, . _ -
    target = "http://host:8080/v2/models/cnn"   # required: any URL veriprint verify takes
    fingerprint = "cnn.vpf"               # required; relative paths are from this file
                                          # (a language model's: api, served_model, an LM spec)
    pubkey = "owner.key.pub"
    spec = "top1"
    interval = "1h"
    jitter = "5m"
    pairs_per_check = 4                   # twin pairs per check; 0: the whole fingerprint
    requests_per_check = 4                # each check goes out as this many requests
    [endpoints.options]                   # target options: timeout, retries, auth_env, ...
    [endpoints.decoys]                    # data = "fashion-mnist", ratio = 1.0, repeat = false
    [endpoints.fresh]                     # instead of a fingerprint: model = "pkg.mod:factory", data = ...

The tables are read with :class:`veriprint.configs.Table` into the dataclasses below;
durations (``"500ms"``, ``"30s"``, ``"5m"`` or ``"5min"``, ``"1.5h"``, ``"1d"``, or seconds)
and byte sizes (``"64M"``, ``"1GiB"``, or bytes) are the project's one grammar
(:mod:`veriprint.units`). A mistake raises :class:`veriprint.errors.ConfigError` (also
importable from here, as before) naming the key, what was expected and what came.
Secrets never appear in the file: auth values, webhook URLs that embed a token and database
passwords come from environment variables named here (``auth_env``, ``url_env``,
``database_env``), and a literal password in a URL is refused.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from veriprint import units
from veriprint.configs import Table, keys_of, load_toml
from veriprint.errors import ConfigError
from veriprint.redact import redact_url

__all__ = [
    "AlertSink",
    "ConfigError",
    "DecoyConfig",
    "EndpointConfig",
    "FreshSourceConfig",
    "MonitorConfig",
    "load_config",
    "parse_config",
    "parse_duration",
    "redact_url",
]

#: The newest monitor file format this veriprint reads.
VERSION = 1
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
SPECS_HINT = "top1, topk:K, probs, probs:N, top1-prob:N or logits"
LM_SPECS_HINT = "a language model's spec: top1-token, top1-token:N, logprobs:K or text"

#: Target options an endpoint may set, with their types (passed to ``open_target``).
TARGET_OPTIONS: dict[str, tuple[type, ...]] = {
    "output": (str,),
    "datatype": (str,),
    "max_batch": (int,),
    "classes": (int,),
    "input_name": (str,),
    "output_name": (str,),
    "timeout": (int, float, str),  # a duration (veriprint.units)
    "retries": (int,),
    "backoff": (int, float, str),  # a duration
    "auth_env": (str,),
    "auth_header": (str,),
    "verify_tls": (bool,),
    "ca_file": (str,),
    "retry_timeouts": (bool,),
    "max_response_bytes": (int, str),  # a byte size (veriprint.units)
}
#: The target options of a language model's endpoint (the transport's, and prompts per request).
LM_TARGET_OPTIONS = ("timeout", "retries", "backoff", "retry_timeouts", "max_response_bytes", "auth_env",
                     "auth_header", "verify_tls", "ca_file", "max_batch")


def parse_duration(value: Any, key: str) -> float:
    """Seconds of a duration in the project's one grammar (:func:`veriprint.units.seconds`:
    a number, or ``"500ms"``, ``"30s"``, ``"5m"``/``"5min"``, ``"1h"``, ``"1d"``), or a
    :class:`ConfigError` naming ``key``."""
    try:
        return units.seconds(value)
    except ConfigError as e:
        raise ConfigError(f"{key}: {e}") from None


@dataclass(frozen=True)
class DecoyConfig:
    """Natural inputs mixed among each check's queries.

    Attributes:
        data: a built-in data set name or an ``.npz`` file (see :func:`veriprint.data.load_data`).
        split: its split (default ``"test"``).
        ratio: decoys per fingerprint sample (default 1.0).
        repeat: once every decoy of the pool was sent, start over (default False: decoys
            stop, with a warning, rather than repeat).
    """

    data: str
    split: str = "test"
    ratio: float = 1.0
    repeat: bool = False


@dataclass(frozen=True)
class FreshSourceConfig:
    """Queries made anew for each check from the owner's model and natural inputs.

    Attributes:
        model: the owner's model, a source :func:`veriprint.models.load_model` takes.
        weights: its weights file, if the source is a factory (default none).
        data: the natural seeds, a data set :func:`veriprint.data.load_data` takes.
        split: its split (default ``"test"``).
        kind: ``"boundary"`` (default), ``"twins"`` or ``"natural"`` (see :mod:`veriprint.verification.queries.fresh`).
        per_check: queries per check (default 16).
        horizon: seconds the seed supply must last at the endpoint's interval (default 30 days).
        horizon_checks: ``horizon`` in checks (at least 1).
    """

    model: str
    data: str
    weights: str | None = None
    split: str = "test"
    kind: Literal["boundary", "twins", "natural"] = "boundary"
    per_check: int = 16
    horizon: float = 30 * 86400.0
    horizon_checks: int = 720


@dataclass(frozen=True)
class EndpointConfig:
    """One deployed model to watch.

    Attributes:
        name: unique name (metric label, URL path): letters, digits, ``.``, ``_``, ``-``.
        target: the model's URL (or any target :func:`veriprint.targets.open_target` takes).
        fingerprint: the ``.vpf`` file (absolute path after loading); None for a fresh endpoint.
        pubkey: Ed25519 public key the file must be signed with (None: unsigned accepted).
        spec: what the API reveals (default ``"top1"``; ``"top1-token"`` for a language model).
        interval: seconds between scheduled checks (default 3600).
        jitter: each check starts up to this many seconds after its slot begins, at an
            offset fixed per slot (default: 10% of the interval).
        check_timeout: seconds a whole check may take before it is recorded INCONCLUSIVE
            (default 120).
        max_batch: most samples per query batch (default: the target's own limit).
        pairs_per_check: twin pairs (or single samples of an unpaired fingerprint, or prompts of a
            language model's) each check spends from the pool; 0 spends the whole fingerprint
            every time (default 4).
        requests_per_check: requests each check's mixed batch is split into, of keyed random
            sizes (default 4; fewer when the check has fewer samples).
        pool_warn_checks: warn when fewer checks than this remain in the pool (default None:
            ``max(1, checks_per_cycle // 4)``).
        on_pool_exhausted: ``"refuse"`` (default: record INCONCLUSIVE until a larger pool is
            given) or ``"wrap"`` (start over in a new shuffled order, warning on every check
            of a repeated pass).
        queries_per_day: query budget over any 24 hours, decoys included (0: none).
        inconclusive_alert_after: alert after this many INCONCLUSIVE checks in a row (default 3).
        options: target options (``timeout``, ``retries``, ``auth_env``, ``datatype``, ...).
        decoys: natural decoys to mix in, or None.
        fresh: the source of fresh checks, or None (a fingerprint pool).
        secret: path of the owner's secret keying every random draw, or None.
        secret_key: the configuration key that named it (for messages).
        false_mismatch_rate: assumed bound on the chance that a request to the intact model
            mismatches (the sequential test's ``p0``, default 1e-3).
        alpha: the sequential test's false alarm bound (default 1e-3).
        kind: ``"lm"`` when the fingerprint is a language model's (checked with
            :func:`veriprint.lm.verify.verify_lm`), else ``"classifier"``.
        api: a language model's API, ``"completions"`` or ``"chat"`` (default None: the
            one the fingerprint was made for).
        served_model: the model name an OpenAI-compatible server serves (default None: the
            one model it lists at ``/v1/models``).
    """

    name: str
    target: str
    fingerprint: str | None
    pubkey: str | None = None
    spec: str = "top1"
    interval: float = 3600.0
    jitter: float | None = None
    check_timeout: float = 120.0
    max_batch: int | None = None
    pairs_per_check: int = 4
    requests_per_check: int = 4
    pool_warn_checks: int | None = None
    on_pool_exhausted: Literal["wrap", "refuse"] = "refuse"
    queries_per_day: int = 0
    inconclusive_alert_after: int = 3
    options: dict[str, Any] = field(default_factory=dict)
    decoys: DecoyConfig | None = None
    fresh: FreshSourceConfig | None = None
    secret: str | None = None
    secret_key: str = ""
    false_mismatch_rate: float = 1e-3
    alpha: float = 1e-3
    kind: Literal["classifier", "lm"] = "classifier"
    api: Literal["completions", "chat"] | None = None
    served_model: str | None = None

    def warn_below(self, checks_per_cycle: int) -> int:
        """Warn when fewer checks than this are left (``pool_warn_checks`` or its default)."""
        if self.pool_warn_checks is not None:
            return self.pool_warn_checks
        return max(1, checks_per_cycle // 4)

    @property
    def jitter_s(self) -> float:
        return 0.1 * self.interval if self.jitter is None else self.jitter

    @property
    def shown_target(self) -> str:
        """The target as it may be shown and stored (credentials redacted)."""
        return redact_url(self.target) if "://" in self.target else self.target

    def target_options(self) -> dict[str, Any]:
        """Options for ``open_target`` (durations as seconds, sizes as bytes; a file's are
        already, a configuration built in Python may give them as text)."""
        out = dict(self.options)
        for k in ("timeout", "backoff"):
            if k in out:
                out[k] = parse_duration(out[k], k)
        if "max_response_bytes" in out:
            try:
                out["max_response_bytes"] = units.byte_count(out["max_response_bytes"])
            except ConfigError as e:
                raise ConfigError(f"max_response_bytes: {e}") from None
        return out


@dataclass(frozen=True)
class AlertSink:
    """A webhook that receives alerts.

    Attributes:
        name: unique name (recorded with each delivery).
        format: ``"json"`` (the alert as a JSON object) or ``"slack"`` (``{"text": ...}``,
            which Slack, Mattermost and Rocket.Chat incoming webhooks take).
        url: the webhook URL, when it holds no secret.
        url_env: or the environment variable that holds it.
        auth_env: environment variable with an ``Authorization`` header value (optional).
        timeout: seconds per delivery attempt (default 10).
        attempts: tries before the delivery is given up (default 5).
        backoff: seconds before the second try, doubled for each next one (default 2).
    """

    name: str
    format: Literal["json", "slack"] = "json"
    url: str | None = None
    url_env: str | None = None
    auth_env: str | None = None
    timeout: float = 10.0
    attempts: int = 5
    backoff: float = 2.0

    def resolve_url(self) -> str:
        if self.url_env:
            return os.environ.get(self.url_env, "")
        return self.url or ""


@dataclass(frozen=True)
class MonitorConfig:
    """The whole configuration.

    Attributes:
        database: SQLAlchemy URL (default ``sqlite:///veriprint-monitor.db`` beside the file).
        database_env: environment variable holding the URL instead (e.g. with a password).
        listen: ``HOST:PORT`` of the dashboard and ``/metrics`` (default ``127.0.0.1:9108``).
        concurrency: checks in flight at once over all endpoints (default 8).
        public_url: the dashboard's address as people reach it, used in alert links.
        secret: path of the owner's secret for keyed draws (endpoints may name their own).
        secret_env: or the environment variable holding that path.
        refresh: seconds between dashboard page reloads (default 30; 0: never).
        endpoints: what to watch.
        alerts: where to send alerts.
        source: the file it was read from.
        version: the file's format (``version = 1`` at the top; a newer one than this
            veriprint reads is refused).
    """

    endpoints: tuple[EndpointConfig, ...]
    alerts: tuple[AlertSink, ...] = ()
    database: str = "sqlite:///veriprint-monitor.db"
    database_env: str | None = None
    listen: str = "127.0.0.1:9108"
    concurrency: int = 8
    public_url: str = ""
    refresh: float = 30.0
    source: str = ""
    secret: str | None = None
    secret_env: str | None = None
    version: int = 1

    def database_url(self) -> str:
        if self.database_env:
            return os.environ.get(self.database_env, "")
        return self.database

    @property
    def host(self) -> str:
        return self.listen.rsplit(":", 1)[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rsplit(":", 1)[1])

    def endpoint(self, name: str) -> EndpointConfig:
        for e in self.endpoints:
            if e.name == name:
                return e
        raise KeyError(name)


def _env_name(t: Table, name: str) -> str | None:
    value: str | None = t.string(name)
    if value is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
        raise t.error(name, "the name of an environment variable", value)
    return value


def _check_no_password(t: Table, name: str, url: str, env_key: str, *, user_ok: bool = False) -> None:
    """The rule every check applies (:func:`veriprint.redact.refuse_url_credentials`), applied
    when the file is read: no ``user@`` or ``user:password@`` before the host (a database URL
    may name its user, ``postgresql://user@host/db``, but never a password)."""
    try:
        parts = urlsplit(url)
        netloc, password = parts.netloc, parts.password
    except ValueError:
        raise t.error(name, "a URL", redact_url(url)) from None
    if user_ok and "@" in netloc and not password:
        return
    if "@" in netloc:
        raise t.error(name, f"a URL without credentials (no user or password before the host: put them in an "
                      f"environment variable named by {env_key})", redact_url(url))


_ENDPOINT_KEYS = ("name", "target", "fingerprint", "pubkey", "spec", "interval", "jitter", "check_timeout",
                  "max_batch", "pairs_per_check", "requests_per_check", "pool_warn_checks", "on_pool_exhausted",
                  "queries_per_day", "inconclusive_alert_after", "options", "decoys", "fresh", "secret",
                  "secret_env", "false_mismatch_rate", "alpha", "api", "served_model")
_BUILTIN_DATA = ("fashion-mnist", "mnist-5k", "digits")


def _secret(t: Table, base: Path, check_files: bool, inherited: tuple[str | None, str]) -> tuple[str | None, str]:
    """``(path, key)`` of the secret named by ``secret`` or ``secret_env`` in ``t``, else ``inherited``.

    Only the path is read here (never the file): messages name the key and the path.
    """
    path = t.string("secret")
    env = _env_name(t, "secret_env")
    if path is not None and env is not None:
        raise t.error("secret", "either secret or secret_env", "<both>")
    if env is not None:
        value = os.environ.get(env, "")
        if not value:
            raise t.error("secret_env", f"environment variable {env} to hold the path of a secret key file",
                          "<unset or empty>")
        resolved, key = str(Path(value).resolve()), t.path("secret_env")
    elif path is not None:
        resolved, key = str((base / path).resolve()), t.path("secret")
    else:
        return inherited
    if check_files and not Path(resolved).is_file():
        raise t.error(key.rsplit(".", 1)[-1], "an existing secret key file (e.g. `head -c 32 /dev/urandom > FILE`)",
                      resolved)
    return resolved, key


def _endpoint(data: Any, key: str, source: str, base: Path, defaults: dict[str, Any], check_files: bool,
              secret: tuple[str | None, str] = (None, "")) -> EndpointConfig:
    if not isinstance(data, dict):
        raise ConfigError.at(key, "a table", f"<{type(data).__name__}>", source=source)
    merged = {**defaults, **data}
    if isinstance(defaults.get("options"), dict) and isinstance(data.get("options"), dict):
        merged["options"] = {**defaults["options"], **data["options"]}
    t = Table(merged, key, source, _ENDPOINT_KEYS)
    name = t.string("name", required=True)
    if not _NAME.match(name):
        raise t.error("name", "letters, digits, '.', '_' or '-' (at most 63, starting with a letter or digit)", name)
    target = t.string("target", required=True)
    if "://" in target:
        _check_no_password(t, "target", target, "options.auth_env")
    fresh_given = t.has("fresh")
    fingerprint = t.string("fingerprint", required=not fresh_given)
    if fresh_given and fingerprint is not None:
        raise t.error("fingerprint", "either fingerprint or a [fresh] table", "<both>")
    fp_path: Path | None = None
    if fingerprint is not None:
        fp_path = (base / fingerprint).resolve()
        if check_files and not fp_path.is_file():
            raise t.error("fingerprint", "an existing .vpf file", str(fp_path))
    pubkey = t.string("pubkey")
    pub_path: str | None = None
    if pubkey is not None:
        pub_path = str((base / pubkey).resolve())
        if check_files and not Path(pub_path).is_file():
            raise t.error("pubkey", "an existing public key file (from `veriprint keygen`)", pub_path)
    model_kind = _kind(fp_path, t.peek("spec"))
    if model_kind == "lm":
        spec = t.string("spec", "top1-token")
        try:
            from veriprint.lm.specs import parse_lm_spec

            parse_lm_spec(spec)
        except ValueError:
            raise t.error("spec", LM_SPECS_HINT, spec) from None
        api = t.string("api")
        if api is not None and api not in ("completions", "chat"):
            raise t.error("api", "'completions' or 'chat'", api)
        served_model = t.string("served_model")
        if served_model == "":
            raise t.error("served_model", "the model name the server serves", served_model)
        if "://" not in target and (base / target).is_dir():  # a model folder, from the file's folder
            target = str((base / target).resolve())
    else:
        spec = t.string("spec", "top1")
        try:
            from veriprint.verification.specs import parse_spec

            parse_spec(spec)
        except ValueError:
            raise t.error("spec", SPECS_HINT, spec) from None
        api = served_model = None
        for k in ("api", "served_model"):
            if t.has(k):
                raise t.error(k, "no such key for a classifier's fingerprint (it is a language model's)",
                              t.peek(k))
    interval = t.duration("interval", 3600.0)
    if interval < 1:
        raise t.error("interval", "at least 1 second", interval)
    jitter = t.duration("jitter", -1.0) if t.has("jitter") else None
    if jitter is not None and jitter >= interval:
        raise t.error("jitter", f"less than the interval ({interval:g} s)", jitter)
    check_timeout = t.duration("check_timeout", 120.0)
    if check_timeout <= 0:
        raise t.error("check_timeout", "a duration > 0", check_timeout)
    max_batch = t.pop("max_batch", (int,), "an integer >= 1", None)
    if max_batch is not None and max_batch < 1:
        raise t.error("max_batch", "an integer >= 1", max_batch)
    pairs = t.integer("pairs_per_check", 4)
    requests = t.integer("requests_per_check", 4, lo=1, hi=1024)
    warn: int | None = t.integer("pool_warn_checks", 0) if t.has("pool_warn_checks") else None
    exhausted = t.string("on_pool_exhausted", "refuse")
    if exhausted not in ("wrap", "refuse"):
        raise t.error("on_pool_exhausted", "'wrap' or 'refuse'", exhausted)
    budget = t.integer("queries_per_day", 0)
    after = t.integer("inconclusive_alert_after", 3, lo=1)
    p0 = t.number("false_mismatch_rate", 1e-3)
    if not 0 < p0 < 0.5:
        raise t.error("false_mismatch_rate", "a number in (0, 0.5)", p0)
    alpha = t.number("alpha", 1e-3)
    if not 0 < alpha < 1:
        raise t.error("alpha", "a number in (0, 1)", alpha)
    secret_path, secret_key = _secret(t, base, check_files, secret)
    options: dict[str, Any] = {}
    ot = t.table("options", tuple(TARGET_OPTIONS))
    if ot is not None:
        for k in list(ot.data):
            if k not in TARGET_OPTIONS:
                raise ot.error(k, f"a target option ({', '.join(TARGET_OPTIONS)})", "<an unknown key>")
            if k in ("auth_env",):
                options[k] = _env_name(ot, k)
                if not os.environ.get(options[k] or ""):
                    raise ot.error(k, f"environment variable {options[k]} to be set", "<unset or empty>")
                continue
            if k in ("timeout", "backoff"):  # the one duration grammar; a timeout of 0 could never answer
                options[k] = ot.duration(k, 0.0, positive=k == "timeout")
                continue
            if k == "max_response_bytes":  # the one byte-size grammar: 1000000, "64M", "1GiB"
                options[k] = ot.byte_size(k, 0)
                continue
            want = TARGET_OPTIONS[k]
            if k == "auth_header":  # checked before it can be quoted: a mistaken value may be a token
                from veriprint.targets.transport import header_name_problem

                bad = header_name_problem(ot.peek(k))
                if bad:
                    raise ot.error(k, "a header name such as 'Authorization'", f"<{bad}>")
            options[k] = ot.pop(k, want, f"{' or '.join(x.__name__ for x in want)}")
        if model_kind == "lm":
            for k in options:
                if k not in LM_TARGET_OPTIONS:
                    raise ot.error(k, f"a target option of a language model ({', '.join(LM_TARGET_OPTIONS)})",
                                   "<an option of a classifier's target>")
        if "output" in options and options["output"] not in ("logits", "probs", "labels", "topk", "top1-prob"):
            raise ConfigError.at(f"{key}.options.output", "logits, probs, labels, topk or top1-prob",
                                 options["output"], source=source)
        if "datatype" in options and options["datatype"] not in ("FP32", "UINT8"):
            raise ConfigError.at(f"{key}.options.datatype", "FP32 or UINT8", options["datatype"], source=source)
        if "ca_file" in options:
            options["ca_file"] = str((base / options["ca_file"]).resolve())
    decoys = None
    if model_kind == "lm" and t.has("decoys"):
        raise t.error("decoys", "no decoys for a language model's fingerprint (decoys are natural inputs of a "
                      "classifier)", "<a decoys table>")
    dt = t.table("decoys", DecoyConfig)
    if dt is not None:
        data_name = _data_name(dt, base, check_files)
        split = _split(dt)
        ratio = dt.number("ratio", 1.0)
        repeat = dt.boolean("repeat", False)
        dt.done()
        decoys = DecoyConfig(data_name, split, ratio, repeat)
    fresh = None
    ft = t.table("fresh", keys_of(FreshSourceConfig, without=("horizon_checks",)))
    if ft is not None:
        model = ft.string("model", required=True)
        prefix, _, attr = model.rpartition(":")
        if prefix and attr and not prefix.endswith(".py"):
            pass  # a factory, package.module:callable
        else:
            p = (base / (prefix or model)).resolve()
            if check_files and not p.is_file():
                raise ft.error("model", "a model factory 'package.module:callable', 'file.py:callable' or an "
                               "existing model file", model)
            model = f"{p}:{attr}" if prefix else str(p)
        weights = ft.string("weights")
        if weights is not None:
            wp = (base / weights).resolve()
            if check_files and not wp.is_file():
                raise ft.error("weights", "an existing weights file", str(wp))
            weights = str(wp)
        fdata = _data_name(ft, base, check_files)
        fsplit = _split(ft)
        kind = ft.string("kind", "boundary")
        if kind not in ("boundary", "twins", "natural"):
            raise ft.error("kind", "'boundary', 'twins' or 'natural'", kind)
        per_check = ft.integer("per_check", 16, lo=1)
        horizon = ft.duration("horizon", 30 * 86400.0)
        if horizon <= 0:
            raise ft.error("horizon", "a duration > 0", horizon)
        ft.done()
        if decoys is not None and (decoys.data, decoys.split) == (fdata, fsplit):
            raise t.error("decoys", "decoys from other natural inputs than fresh.data "
                          "(a decoy next to a query made from it lets a near-duplicate router pair them)",
                          f"{fdata} ({fsplit}), the same as fresh.data")
        if secret_path is None:
            raise t.error("secret", "a secret for a fresh endpoint (secret or secret_env here, under [defaults] "
                          "or under [monitor]): fresh checks are drawn from it", "<none>")
        fresh = FreshSourceConfig(model=model, data=fdata, weights=weights, split=fsplit, kind=kind,
                                  per_check=per_check, horizon=horizon,
                                  horizon_checks=max(1, math.ceil(horizon / interval)))
    t.done()
    return EndpointConfig(name=name, target=target, fingerprint=None if fp_path is None else str(fp_path),
                          pubkey=pub_path, spec=spec, interval=interval, jitter=jitter, check_timeout=check_timeout,
                          max_batch=max_batch, pairs_per_check=pairs, requests_per_check=requests,
                          pool_warn_checks=warn, on_pool_exhausted=exhausted, queries_per_day=budget,
                          inconclusive_alert_after=after, options=options, decoys=decoys, fresh=fresh,
                          secret=secret_path, secret_key=secret_key, false_mismatch_rate=p0, alpha=alpha,
                          kind=model_kind, api=api, served_model=served_model)


def _kind(fingerprint: Path | None, spec: Any) -> Literal["classifier", "lm"]:
    """``"lm"`` when the fingerprint file is a language model's (its header says so); for a
    file not there to read (``check_files=False``), when the spec is a language model's."""
    if fingerprint is None:
        return "classifier"
    if fingerprint.is_file():
        from veriprint.lm.fingerprint import is_lm_file

        return "lm" if is_lm_file(fingerprint) else "classifier"
    from veriprint.lm.specs import parse_lm_spec

    try:
        parse_lm_spec(spec)
    except Exception:
        return "classifier"
    return "lm"


def _data_name(t: Table, base: Path, check_files: bool) -> str:
    data_name: str = t.string("data", required=True)
    if data_name in _BUILTIN_DATA:
        return data_name
    p = (base / data_name).resolve()
    if check_files and not p.exists():
        raise t.error("data", "fashion-mnist, mnist-5k, digits or an existing .npz file or folder", data_name)
    return str(p)


def _split(t: Table) -> str:
    split: str = t.string("split", "test")
    if split not in ("train", "test"):
        raise t.error("split", "'train' or 'test'", split)
    return split


def _sink(data: Any, key: str, source: str) -> AlertSink:
    t = Table(data, key, source, AlertSink)
    name = t.string("name", required=True)
    if not _NAME.match(name):
        raise t.error("name", "letters, digits, '.', '_' or '-'", name)
    fmt = t.string("format", "json")
    if fmt not in ("json", "slack"):
        raise t.error("format", "'json' or 'slack'", fmt)
    url = t.string("url")
    url_env = _env_name(t, "url_env")
    if (url is None) == (url_env is None):
        raise t.error("url", "exactly one of url and url_env", "<both>" if url else "<neither>")
    if url is not None:
        if urlsplit(url).scheme not in ("http", "https"):
            raise t.error("url", "an http:// or https:// URL", redact_url(url))
        _check_no_password(t, "url", url, "url_env")
        if "hooks.slack.com" in url:
            raise t.error("url", "a Slack webhook URL (a secret) in an environment variable named by url_env",
                          redact_url(url))
    elif not os.environ.get(url_env or ""):
        raise t.error("url_env", f"environment variable {url_env} to hold the webhook URL", "<unset or empty>")
    auth_env = _env_name(t, "auth_env")
    if auth_env and not os.environ.get(auth_env):
        raise t.error("auth_env", f"environment variable {auth_env} to be set", "<unset or empty>")
    timeout = t.duration("timeout", 10.0)
    attempts = t.integer("attempts", 5, lo=1, hi=100)
    backoff = t.duration("backoff", 2.0)
    t.done()
    return AlertSink(name, fmt, url, url_env, auth_env, timeout, attempts, backoff)


def parse_config(data: dict[str, Any], *, source: str = "", base: str | os.PathLike[str] = ".",
                 check_files: bool = True) -> MonitorConfig:
    """Check a parsed TOML document and build the :class:`MonitorConfig`.

    Args:
        data: the document.
        source: its file name, shown in errors.
        base: folder that relative paths are resolved against.
        check_files: require the fingerprint and key files to exist (default True).
    """
    root = Table(data, "", source, ("version", "monitor", "defaults", "alerts", "endpoints"))
    version = root.version(VERSION)
    base_dir = Path(base)
    monitor_keys = keys_of(MonitorConfig, without=("endpoints", "alerts", "source", "version"))
    mt = root.table("monitor", monitor_keys) or Table({}, "monitor", source, monitor_keys)
    database = mt.string("database")
    database_env = _env_name(mt, "database_env")
    if database is not None and database_env is not None:
        raise mt.error("database", "either database or database_env", "<both>")
    if database_env is not None and not os.environ.get(database_env):
        raise mt.error("database_env", f"environment variable {database_env} to hold a database URL",
                       "<unset or empty>")
    if database is None:
        database = f"sqlite:///{(base_dir / 'veriprint-monitor.db').resolve()}"
    else:
        _check_no_password(mt, "database", database, "database_env", user_ok=True)
        scheme = database.split("://", 1)[0] if "://" in database else ""
        if not scheme.startswith(("sqlite", "postgresql")):
            raise mt.error("database", "a sqlite:/// or postgresql:// URL", redact_url(database))
        if scheme.startswith("sqlite") and database.startswith("sqlite:///") and \
                not database.startswith("sqlite:////") and database != "sqlite:///:memory:":
            database = f"sqlite:///{(base_dir / database[len('sqlite:///'):]).resolve()}"
    listen = mt.string("listen", "127.0.0.1:9108")
    m = re.fullmatch(r"(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):(\d{1,5})", listen)
    if not m or int(m.group(2)) > 65535:
        raise mt.error("listen", "HOST:PORT", listen)
    concurrency = mt.integer("concurrency", 8, lo=1, hi=1024)
    public_url = mt.string("public_url", "")
    refresh = mt.duration("refresh", 30.0)
    m_secret_env = mt.peek("secret_env") if isinstance(mt.peek("secret_env"), str) else None
    monitor_secret = _secret(mt, base_dir, check_files, (None, ""))
    mt.done()
    dt = root.table("defaults")
    defaults = dict(dt.data) if dt is not None else {}
    for k in defaults:
        if k not in _ENDPOINT_KEYS or k == "name":
            raise ConfigError.at(f"defaults.{k}", f"an endpoint key ({', '.join(_ENDPOINT_KEYS[1:])})",
                                 "<an unknown key>", source=source)
    raw_alerts = root.pop("alerts", (list,), "an array of tables ([[alerts]])", [])
    sinks = tuple(_sink(a, f"alerts[{i}]", source) for i, a in enumerate(raw_alerts))
    names = [s.name for s in sinks]
    for i, n in enumerate(names):
        if n in names[:i]:
            raise ConfigError.at(f"alerts[{i}].name", "a name not used by another alert", n, source=source)
    raw = root.pop("endpoints", (list,), "an array of tables ([[endpoints]])", required=True)
    if not raw:
        raise ConfigError.at("endpoints", "at least one [[endpoints]] table", "<none>", source=source)
    endpoints = tuple(_endpoint(e, f"endpoints[{i}]", source, base_dir, defaults, check_files, monitor_secret)
                      for i, e in enumerate(raw))
    seen: set[str] = set()
    for i, e in enumerate(endpoints):
        if e.name in seen:
            raise ConfigError.at(f"endpoints[{i}].name", "a name not used by another endpoint", e.name, source=source)
        seen.add(e.name)
    root.done()
    return MonitorConfig(endpoints=endpoints, alerts=sinks, database=database, database_env=database_env,
                         listen=listen, concurrency=concurrency, public_url=public_url, refresh=refresh,
                         source=source, secret=monitor_secret[0] if m_secret_env is None else None,
                         secret_env=m_secret_env, version=version)


def load_config(path: str | os.PathLike[str], **overrides: Any) -> MonitorConfig:
    """Read and check a monitor TOML file (:func:`veriprint.configs.load_toml`); ``overrides``
    replace top-level fields."""
    p = Path(path)
    cfg = parse_config(load_toml(p), source=str(p), base=p.resolve().parent)
    return replace(cfg, **overrides) if overrides else cfg
