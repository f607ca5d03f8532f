"""Checks record how they were sent and the sequential test after them.

``source``: ``"pool"`` (a fingerprint's rotation) or ``"fresh"`` (made for the check);
``requests``: each request's size, decoys and verdict; ``sequential``: the state of the
sequential test over the endpoint's requests after this check (``veriprint.monitor.sequential``).
Rows written before this revision keep NULL there.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("checks") as b:
        b.add_column(sa.Column("source", sa.String(16), nullable=True))
        b.add_column(sa.Column("requests", sa.JSON(), nullable=True))
        b.add_column(sa.Column("sequential", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("checks") as b:
        b.drop_column("sequential")
        b.drop_column("requests")
        b.drop_column("source")
