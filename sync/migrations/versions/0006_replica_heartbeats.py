"""replicas (instance, started_at, heartbeat_at): every replica heartbeats here, so a live replica takes over
the outbox claims and leases of a dead one after TICKETPAGER_ENGINE__REPLICA_TIMEOUT_SECONDS instead of
waiting for the claim (60 s) or lease to expire

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "replicas",
        sa.Column("instance", sa.String(length=100), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("instance", name=op.f("pk_replicas")),
    )


def downgrade() -> None:
    op.drop_table("replicas")
