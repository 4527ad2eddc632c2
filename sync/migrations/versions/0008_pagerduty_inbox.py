"""pagerduty_inbox (PagerDuty v3 webhooks, deduped on X-Webhook-Id, stored before the 202) and incidents
(PagerDuty incident id -> our dedup_key, number, link, status, escalation policy, last event time); links gain
hold_version (no new page after a person resolved in PagerDuty while the ticket is unchanged)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "pagerduty_inbox",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("webhook_id", sa.String(length=255), nullable=False),
        sa.Column("event_id", sa.String(length=255), nullable=False),
        sa.Column("event_type", sa.String(length=64), nullable=False),
        sa.Column("incident_id", sa.String(length=64), nullable=True),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=16), server_default="pending", nullable=False),
        sa.Column("outcome", sa.String(length=32), nullable=True),
        sa.Column("processed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pagerduty_inbox")),
        sa.UniqueConstraint("webhook_id", name=op.f("uq_pagerduty_inbox_webhook_id")),
    )
    op.create_index(
        "ix_pagerduty_inbox_pending",
        "pagerduty_inbox",
        ["id"],
        unique=False,
        sqlite_where=sa.text("status = 'pending'"),
        postgresql_where=sa.text("status = 'pending'"),
    )
    op.create_index("ix_pagerduty_inbox_received_at", "pagerduty_inbox", ["received_at"], unique=False)
    op.create_table(
        "incidents",
        sa.Column("incident_id", sa.String(length=64), nullable=False),
        sa.Column("dedup_key", sa.String(length=255), nullable=False),
        sa.Column("number", sa.Integer(), nullable=True),
        sa.Column("html_url", sa.Text(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=True),
        sa.Column("escalation_policy_id", sa.String(length=64), nullable=True),
        sa.Column("learned_by", sa.String(length=16), nullable=False),
        sa.Column("last_event_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("incident_id", name=op.f("pk_incidents")),
    )
    op.create_index("ix_incidents_dedup_key", "incidents", ["dedup_key"], unique=False)
    with op.batch_alter_table("links", schema=None) as batch_op:
        batch_op.add_column(sa.Column("hold_version", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("links", schema=None) as batch_op:
        batch_op.drop_column("hold_version")
    op.drop_index("ix_incidents_dedup_key", table_name="incidents")
    op.drop_table("incidents")
    op.drop_index("ix_pagerduty_inbox_received_at", table_name="pagerduty_inbox")
    op.drop_index("ix_pagerduty_inbox_pending", table_name="pagerduty_inbox")
    op.drop_table("pagerduty_inbox")
