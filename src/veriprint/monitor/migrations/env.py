"""Alembic environment for the monitor's schema.

The monitor runs migrations itself at start (:func:`veriprint.monitor.db.upgrade`), handing
its connection in ``config.attributes["connection"]``. To run Alembic by hand, set
``sqlalchemy.url`` (e.g. ``alembic -x url=sqlite:///monitor.db upgrade head`` with an ini
file whose ``script_location`` points here).
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from veriprint.monitor.db import Base, engine_url

config = context.config
target_metadata = Base.metadata


def run() -> None:
    conn = config.attributes.get("connection")
    if conn is not None:
        context.configure(connection=conn, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit("give the database URL: alembic -x url=... upgrade head")
    engine = create_engine(engine_url(url))
    with engine.begin() as connection:
        context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()


run()
