"""The monitor's history: SQLAlchemy 2 models, Alembic migrations and the one store API.

SQLite by default (one file, WAL journal), PostgreSQL by URL (``postgresql://...``, driven
by psycopg 3). The schema is created and upgraded by the Alembic migrations shipped in
``veriprint/monitor/migrations`` each time the monitor starts.

Crash safety. A check is two transactions:

1. :meth:`Store.begin` records an **attempt** (endpoint, slot, attempt number, the pool
   units it will spend, the queries it will send) before any query leaves, so that pool
   spending and the query budget count what a provider may have seen, even when the
   process dies mid-check;
2. :meth:`Store.complete` writes the **check** row, links the attempt to it and queues
   its alerts, all in one transaction, under the unique key ``(endpoint, slot)``: a
   restarted monitor, a late answer after a timeout or a second ``--once`` run in the same
   slot cannot store a check twice, and a check is either stored whole or not at all.

Times are Unix seconds (floats); a slot is the start of a scheduling period in Unix
milliseconds.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    func,
    select,
    update,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

__all__ = ["Alert", "AlertAttempt", "Attempt", "Base", "Check", "Store", "StoredCheck", "engine_url"]

log = logging.getLogger(__name__)

VERDICTS = ("INTACT", "TAMPERED", "INCONCLUSIVE")


class Base(DeclarativeBase):
    pass


class Attempt(Base):
    """A check that started: what it was going to spend (written before any query)."""

    __tablename__ = "attempts"
    __table_args__ = (UniqueConstraint("endpoint", "slot", "attempt", name="uq_attempts_slot"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    endpoint: Mapped[str] = mapped_column(String(64), index=True)
    slot: Mapped[int] = mapped_column(BigInteger)
    attempt: Mapped[int] = mapped_column(Integer)
    fingerprint_sha256: Mapped[str] = mapped_column(String(64))
    pool_cycle: Mapped[int] = mapped_column(Integer)
    pool_start: Mapped[int] = mapped_column(Integer)
    pool_units: Mapped[list[int]] = mapped_column(JSON)
    planned_queries: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[float] = mapped_column(Float, index=True)
    check_id: Mapped[int | None] = mapped_column(ForeignKey("checks.id"), nullable=True)


class Check(Base):
    """One completed check, written once, whole."""

    __tablename__ = "checks"
    __table_args__ = (UniqueConstraint("endpoint", "slot", name="uq_checks_slot"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    endpoint: Mapped[str] = mapped_column(String(64), index=True)
    slot: Mapped[int] = mapped_column(BigInteger)
    attempt_id: Mapped[int] = mapped_column(Integer)
    scheduled_at: Mapped[float] = mapped_column(Float)
    started_at: Mapped[float] = mapped_column(Float)
    finished_at: Mapped[float] = mapped_column(Float, index=True)
    target: Mapped[str] = mapped_column(Text)
    spec: Mapped[str] = mapped_column(String(32))
    fingerprint_sha256: Mapped[str] = mapped_column(String(64))
    signature: Mapped[str] = mapped_column(String(16))
    model_hash: Mapped[str] = mapped_column(String(128))
    verdict: Mapped[str] = mapped_column(String(16), index=True)
    reason: Mapped[str] = mapped_column(Text)
    queries: Mapped[int] = mapped_column(Integer)
    decoys: Mapped[int] = mapped_column(Integer)
    compared: Mapped[int] = mapped_column(Integer)
    mismatches: Mapped[int] = mapped_column(Integer)
    ambiguous: Mapped[int] = mapped_column(Integer)
    duration_s: Mapped[float] = mapped_column(Float)
    target_s: Mapped[float] = mapped_column(Float)
    pool_cycle: Mapped[int] = mapped_column(Integer)
    pool_start: Mapped[int] = mapped_column(Integer)
    pool_units: Mapped[list[int]] = mapped_column(JSON)
    pool_checks_left: Mapped[int | None] = mapped_column(Integer, nullable=True)
    sample_indices: Mapped[list[int]] = mapped_column(JSON)
    samples: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    tolerance: Mapped[dict[str, float]] = mapped_column(JSON)
    warnings: Mapped[list[str]] = mapped_column(JSON)
    consecutive_inconclusive: Mapped[int] = mapped_column(Integer)
    alert_open: Mapped[bool] = mapped_column(Boolean)
    source: Mapped[str | None] = mapped_column(String(16), nullable=True)
    requests: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, nullable=True)
    sequential: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class Alert(Base):
    """One alert for one sink (the outbox): queued with its check, then delivered with retries."""

    __tablename__ = "alerts"
    __table_args__ = (UniqueConstraint("dedup_key", "sink", name="uq_alerts_dedup"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    dedup_key: Mapped[str] = mapped_column(String(200))
    sink: Mapped[str] = mapped_column(String(64))
    endpoint: Mapped[str] = mapped_column(String(64), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    check_id: Mapped[int] = mapped_column(ForeignKey("checks.id"))
    created_at: Mapped[float] = mapped_column(Float)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(12), index=True)
    attempts: Mapped[int] = mapped_column(Integer)
    next_attempt_at: Mapped[float] = mapped_column(Float)
    delivered_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    last_error: Mapped[str] = mapped_column(Text)


class AlertAttempt(Base):
    """One delivery attempt of an alert."""

    __tablename__ = "alert_attempts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    alert_id: Mapped[int] = mapped_column(ForeignKey("alerts.id"), index=True)
    at: Mapped[float] = mapped_column(Float)
    ok: Mapped[bool] = mapped_column(Boolean)
    status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error: Mapped[str] = mapped_column(Text)
    seconds: Mapped[float] = mapped_column(Float)


@dataclass(frozen=True)
class StoredCheck:
    """What :meth:`Store.complete` stored: the check's id and the alerts it queued."""

    id: int
    alerts: tuple[str, ...]
    consecutive_inconclusive: int


def engine_url(url: str) -> str:
    """The URL with psycopg 3 as the PostgreSQL driver when none is named."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def shown_url(url: str) -> str:
    """The database URL as it may be logged (password hidden)."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "(unparsable URL)"


def upgrade(engine: Engine) -> None:
    """Create or upgrade the schema to the newest migration."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).with_name("migrations")))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


class Store:
    """The monitor's database.

    Args:
        url: SQLAlchemy URL (``sqlite:///file.db``, ``postgresql://user@host/db``).
        migrate: run the migrations first (default True).
    """

    def __init__(self, url: str, *, migrate: bool = True) -> None:
        self.url = engine_url(url)
        self.sqlite = self.url.startswith("sqlite")
        kwargs: dict[str, Any] = {"future": True}
        if self.sqlite:
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 60}
        else:
            kwargs.update(pool_size=10, max_overflow=20, pool_pre_ping=True)
        self.engine = create_engine(self.url, **kwargs)
        if self.sqlite:
            event.listen(self.engine, "connect", _sqlite_pragmas)
        # SQLite takes one writer at a time; serialise this process's writers to avoid
        # busy retries (other processes still wait on the busy timeout).
        self._write_lock = threading.Lock() if self.sqlite else None
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        if migrate:
            upgrade(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def write(self) -> Iterator[Session]:
        """One write transaction (committed on success, rolled back on error)."""
        if self._write_lock is not None:
            self._write_lock.acquire()
        try:
            with self.sessions.begin() as s:
                yield s
        finally:
            if self._write_lock is not None:
                self._write_lock.release()

    @contextmanager
    def read(self) -> Iterator[Session]:
        with self.sessions() as s:
            yield s

    # --- scheduling and the pool --------------------------------------------------------------

    def last_slots(self) -> dict[str, int]:
        """The newest stored slot of each endpoint."""
        with self.read() as s:
            return {e: int(v) for e, v in s.execute(select(Check.endpoint, func.max(Check.slot))
                                                    .group_by(Check.endpoint))}

    def has_check(self, endpoint: str, slot: int) -> bool:
        with self.read() as s:
            return s.scalar(select(Check.id).where(Check.endpoint == endpoint, Check.slot == slot)) is not None

    def pool_position(self, endpoint: str, sha256: str) -> tuple[int, int]:
        """``(cycle, position)`` after the last attempt on this fingerprint (``(0, 0)``: fresh)."""
        with self.read() as s:
            a = s.scalars(select(Attempt).where(Attempt.endpoint == endpoint,
                                                Attempt.fingerprint_sha256 == sha256)
                          .order_by(Attempt.id.desc()).limit(1)).first()
        if a is None:
            return 0, 0
        return a.pool_cycle, a.pool_start + len(a.pool_units)

    def sequential_state(self, endpoint: str) -> dict[str, Any] | None:
        """The sequential test's state stored with the endpoint's newest check that has one."""
        with self.read() as s:
            return s.scalars(select(Check.sequential).where(Check.endpoint == endpoint, Check.sequential.is_not(None))
                             .order_by(Check.slot.desc()).limit(1)).first()

    def attempt_number(self, endpoint: str, attempt_id: int) -> int:
        """How many attempts of the endpoint came before attempt ``attempt_id`` (0 for the first)."""
        with self.read() as s:
            return int(s.scalar(select(func.count()).select_from(Attempt)
                                .where(Attempt.endpoint == endpoint, Attempt.id < attempt_id)) or 0)

    def queries_since(self, endpoint: str, since: float) -> int:
        """Queries that attempts started since ``since`` sent or were about to send."""
        with self.read() as s:
            return int(s.scalar(select(func.coalesce(func.sum(Attempt.planned_queries), 0))
                                .where(Attempt.endpoint == endpoint, Attempt.started_at >= since)) or 0)

    def begin(self, endpoint: str, slot: int, sha256: str, cycle: int, start: int, units: list[int],
              planned_queries: int) -> int | None:
        """Record that a check starts; its attempt id, or None if the slot already has a check."""
        with self.write() as s:
            if s.scalar(select(Check.id).where(Check.endpoint == endpoint, Check.slot == slot)) is not None:
                return None
            n = s.scalar(select(func.count()).select_from(Attempt)
                         .where(Attempt.endpoint == endpoint, Attempt.slot == slot)) or 0
            a = Attempt(endpoint=endpoint, slot=slot, attempt=int(n), fingerprint_sha256=sha256, pool_cycle=cycle,
                        pool_start=start, pool_units=list(units), planned_queries=planned_queries,
                        started_at=time.time())
            s.add(a)
            s.flush()
            return int(a.id)

    # --- completing a check ---------------------------------------------------------------

    def complete(self, attempt_id: int, row: dict[str, Any], *, sinks: tuple[str, ...], inconclusive_after: int,
                 payload: dict[str, Any]) -> StoredCheck | None:
        """Store a finished check and queue its alerts, in one transaction.

        Args:
            attempt_id: from :meth:`begin`.
            row: the :class:`Check` columns except the ones derived here (ids, streaks).
            sinks: alert sinks to queue alerts for.
            inconclusive_after: INCONCLUSIVE checks in a row that raise an alert.
            payload: fields every alert of this check carries.

        Returns:
            the stored check, or None when the slot already had one (nothing is written).
        """
        try:
            with self.write() as s:
                return self._complete(s, attempt_id, row, sinks, inconclusive_after, payload)
        except IntegrityError:
            log.info("check of %s in slot %s was already stored; this one is dropped",
                     row.get("endpoint"), row.get("slot"))
            return None

    def _complete(self, s: Session, attempt_id: int, row: dict[str, Any], sinks: tuple[str, ...],
                  after: int, payload: dict[str, Any]) -> StoredCheck | None:
        endpoint, verdict = row["endpoint"], row["verdict"]
        prev = s.scalars(select(Check).where(Check.endpoint == endpoint, Check.slot < row["slot"])
                         .order_by(Check.slot.desc()).limit(1)).first()
        streak = (prev.consecutive_inconclusive if prev else 0) + 1 if verdict == "INCONCLUSIVE" else 0
        kinds: list[tuple[str, str]] = []  # (kind, dedup key)
        if verdict == "TAMPERED" and (prev is None or prev.verdict != "TAMPERED"):
            kinds.append(("tampered", f"{endpoint}/tampered/{row['slot']}"))
        if verdict == "INCONCLUSIVE" and streak == after:
            first = row["slot"] if after == 1 else _streak_start(s, endpoint, row["slot"], after - 1)
            kinds.append(("inconclusive", f"{endpoint}/inconclusive/{first}"))
        was_open = bool(prev and prev.alert_open)
        if verdict == "INTACT" and was_open:
            kinds.append(("resolved", f"{endpoint}/resolved/{row['slot']}"))
        is_open = bool(kinds and kinds[0][0] != "resolved") or (was_open and verdict != "INTACT")
        check = Check(**row, attempt_id=attempt_id, consecutive_inconclusive=streak, alert_open=is_open)
        s.add(check)
        s.flush()
        s.execute(update(Attempt).where(Attempt.id == attempt_id).values(check_id=check.id))
        now = time.time()
        for kind, key in kinds:
            body = {**payload, "kind": kind, "check_id": check.id, "dedup_key": key,
                    "consecutive_inconclusive": streak}
            for sink in sinks:
                s.add(Alert(dedup_key=key, sink=sink, endpoint=endpoint, kind=kind, check_id=check.id,
                            created_at=now, payload=body, status="pending", attempts=0, next_attempt_at=now,
                            last_error=""))
        s.flush()
        return StoredCheck(int(check.id), tuple(k for k, _ in kinds), streak)

    # --- alerts ---------------------------------------------------------------------------

    def due_alerts(self, now: float, limit: int = 50) -> list[Alert]:
        with self.read() as s:
            return list(s.scalars(select(Alert).where(Alert.status == "pending", Alert.next_attempt_at <= now)
                                  .order_by(Alert.id).limit(limit)))

    def pending_alerts(self) -> int:
        with self.read() as s:
            return int(s.scalar(select(func.count()).select_from(Alert).where(Alert.status == "pending")) or 0)

    def record_delivery(self, alert_id: int, *, ok: bool, status_code: int | None, error: str, seconds: float,
                        max_attempts: int, backoff: float) -> str:
        """Record one delivery attempt; the alert's new status."""
        now = time.time()
        with self.write() as s:
            a = s.get(Alert, alert_id)
            if a is None:
                return "missing"
            a.attempts += 1
            if ok:
                a.status, a.delivered_at, a.last_error = "delivered", now, ""
            else:
                a.last_error = error
                if a.attempts >= max_attempts:
                    a.status = "failed"
                else:
                    a.next_attempt_at = now + backoff * 2 ** (a.attempts - 1)
            s.add(AlertAttempt(alert_id=alert_id, at=now, ok=ok, status_code=status_code, error=error,
                               seconds=seconds))
            return a.status

    # --- reads for the dashboard and metrics ---------------------------------------------------

    def latest(self) -> dict[str, Check]:
        """The newest check of each endpoint."""
        with self.read() as s:
            newest = select(Check.endpoint, func.max(Check.slot).label("slot")).group_by(Check.endpoint).subquery()
            rows = s.scalars(select(Check).join(newest, (Check.endpoint == newest.c.endpoint)
                                                & (Check.slot == newest.c.slot)))
            return {c.endpoint: c for c in rows}

    def last_conclusive(self) -> dict[str, float]:
        with self.read() as s:
            return {e: float(t) for e, t in s.execute(
                select(Check.endpoint, func.max(Check.finished_at)).where(Check.verdict != "INCONCLUSIVE")
                .group_by(Check.endpoint))}

    def totals(self) -> list[tuple[str, str, int, int, int]]:
        """``(endpoint, verdict, checks, queries, decoys)`` over the whole history."""
        with self.read() as s:
            return [(e, v, int(n), int(q or 0), int(d or 0)) for e, v, n, q, d in s.execute(
                select(Check.endpoint, Check.verdict, func.count(), func.sum(Check.queries), func.sum(Check.decoys))
                .group_by(Check.endpoint, Check.verdict))]

    def alert_counts(self) -> list[tuple[str, str, str, int]]:
        """``(sink, kind, status, alerts)``."""
        with self.read() as s:
            return [(a, k, st, int(n)) for a, k, st, n in s.execute(
                select(Alert.sink, Alert.kind, Alert.status, func.count())
                .group_by(Alert.sink, Alert.kind, Alert.status))]

    def interrupted(self) -> dict[str, int]:
        """Attempts per endpoint that never completed (the process died or the check is running)."""
        with self.read() as s:
            return {e: int(n) for e, n in s.execute(
                select(Attempt.endpoint, func.count()).where(Attempt.check_id.is_(None))
                .group_by(Attempt.endpoint))}

    def checks(self, endpoint: str | None = None, limit: int = 200) -> list[Check]:
        """Newest first."""
        with self.read() as s:
            q = select(Check)
            if endpoint is not None:
                q = q.where(Check.endpoint == endpoint)
            return list(s.scalars(q.order_by(Check.finished_at.desc(), Check.id.desc()).limit(limit)))

    def recent(self, limit: int) -> dict[str, list[Check]]:
        """The ``limit`` newest checks of every endpoint, newest first, in one query (a window
        over each endpoint's history), so a page of many endpoints costs one round trip."""
        with self.read() as s:
            rank = func.row_number().over(partition_by=Check.endpoint,
                                          order_by=(Check.finished_at.desc(), Check.id.desc())).label("rank")
            ranked = select(Check.id, rank).subquery()
            rows = s.scalars(select(Check).join(ranked, Check.id == ranked.c.id).where(ranked.c.rank <= limit)
                             .order_by(Check.endpoint, Check.finished_at.desc(), Check.id.desc()))
            out: dict[str, list[Check]] = {}
            for c in rows:
                out.setdefault(c.endpoint, []).append(c)
            return out

    def check(self, check_id: int) -> Check | None:
        with self.read() as s:
            return s.get(Check, check_id)

    def alerts(self, endpoint: str | None = None, check_id: int | None = None, limit: int = 100) -> list[Alert]:
        with self.read() as s:
            q = select(Alert)
            if endpoint is not None:
                q = q.where(Alert.endpoint == endpoint)
            if check_id is not None:
                q = q.where(Alert.check_id == check_id)
            return list(s.scalars(q.order_by(Alert.id.desc()).limit(limit)))

    def alert_attempts(self, alert_id: int) -> list[AlertAttempt]:
        return self.attempts_of([alert_id]).get(alert_id, [])

    def attempts_of(self, alert_ids: list[int]) -> dict[int, list[AlertAttempt]]:
        """Every delivery attempt of these alerts, oldest first, in one query."""
        out: dict[int, list[AlertAttempt]] = {}
        if not alert_ids:
            return out
        with self.read() as s:
            for a in s.scalars(select(AlertAttempt).where(AlertAttempt.alert_id.in_(alert_ids))
                               .order_by(AlertAttempt.id)):
                out.setdefault(a.alert_id, []).append(a)
        return out


def _streak_start(s: Session, endpoint: str, slot: int, back: int) -> int:
    """The slot of the check ``back`` checks before ``slot`` (the start of a streak)."""
    rows = list(s.scalars(select(Check.slot).where(Check.endpoint == endpoint, Check.slot < slot)
                          .order_by(Check.slot.desc()).limit(back)))
    return int(rows[-1]) if rows else slot


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=60000")
    cur.close()
