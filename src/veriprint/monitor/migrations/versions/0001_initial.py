"""The first schema: attempts, checks, alerts and their delivery attempts.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "checks",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("endpoint", sa.String(64), nullable=False),
        sa.Column("slot", sa.BigInteger(), nullable=False),
        sa.Column("attempt_id", sa.Integer(), nullable=False),
        sa.Column("scheduled_at", sa.Float(), nullable=False),
        sa.Column("started_at", sa.Float(), nullable=False),
        sa.Column("finished_at", sa.Float(), nullable=False),
        sa.Column("target", sa.Text(), nullable=False),
        sa.Column("spec", sa.String(32), nullable=False),
        sa.Column("fingerprint_sha256", sa.String(64), nullable=False),
        sa.Column("signature", sa.String(16), nullable=False),
        sa.Column("model_hash", sa.String(128), nullable=False),
        sa.Column("verdict", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("queries", sa.Integer(), nullable=False),
        sa.Column("decoys", sa.Integer(), nullable=False),
        sa.Column("compared", sa.Integer(), nullable=False),
        sa.Column("mismatches", sa.Integer(), nullable=False),
        sa.Column("ambiguous", sa.Integer(), nullable=False),
        sa.Column("duration_s", sa.Float(), nullable=False),
        sa.Column("target_s", sa.Float(), nullable=False),
        sa.Column("pool_cycle", sa.Integer(), nullable=False),
        sa.Column("pool_start", sa.Integer(), nullable=False),
        sa.Column("pool_units", sa.JSON(), nullable=False),
        sa.Column("pool_checks_left", sa.Integer(), nullable=True),
        sa.Column("sample_indices", sa.JSON(), nullable=False),
        sa.Column("samples", sa.JSON(), nullable=False),
        sa.Column("tolerance", sa.JSON(), nullable=False),
        sa.Column("warnings", sa.JSON(), nullable=False),
        sa.Column("consecutive_inconclusive", sa.Integer(), nullable=False),
        sa.Column("alert_open", sa.Boolean(), nullable=False),
        sa.UniqueConstraint("endpoint", "slot", name="uq_checks_slot"),
    )
    op.create_index("ix_checks_endpoint", "checks", ["endpoint"])
    op.create_index("ix_checks_finished_at", "checks", ["finished_at"])
    op.create_index("ix_checks_verdict", "checks", ["verdict"])
    op.create_table(
        "attempts",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("endpoint", sa.String(64), nullable=False),
        sa.Column("slot", sa.BigInteger(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("fingerprint_sha256", sa.String(64), nullable=False),
        sa.Column("pool_cycle", sa.Integer(), nullable=False),
        sa.Column("pool_start", sa.Integer(), nullable=False),
        sa.Column("pool_units", sa.JSON(), nullable=False),
        sa.Column("planned_queries", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.Float(), nullable=False),
        sa.Column("check_id", sa.Integer(), sa.ForeignKey("checks.id"), nullable=True),
        sa.UniqueConstraint("endpoint", "slot", "attempt", name="uq_attempts_slot"),
    )
    op.create_index("ix_attempts_endpoint", "attempts", ["endpoint"])
    op.create_index("ix_attempts_started_at", "attempts", ["started_at"])
    op.create_table(
        "alerts",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("dedup_key", sa.String(200), nullable=False),
        sa.Column("sink", sa.String(64), nullable=False),
        sa.Column("endpoint", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("check_id", sa.Integer(), sa.ForeignKey("checks.id"), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(12), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.Float(), nullable=False),
        sa.Column("delivered_at", sa.Float(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=False),
        sa.UniqueConstraint("dedup_key", "sink", name="uq_alerts_dedup"),
    )
    op.create_index("ix_alerts_endpoint", "alerts", ["endpoint"])
    op.create_index("ix_alerts_status", "alerts", ["status"])
    op.create_table(
        "alert_attempts",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("alert_id", sa.Integer(), sa.ForeignKey("alerts.id"), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("ok", sa.Boolean(), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("seconds", sa.Float(), nullable=False),
    )
    op.create_index("ix_alert_attempts_alert_id", "alert_attempts", ["alert_id"])


def downgrade() -> None:
    op.drop_table("alert_attempts")
    op.drop_table("alerts")
    op.drop_table("attempts")
    op.drop_table("checks")
