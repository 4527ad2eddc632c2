"""outbox (routing_key, sent_at): the rate limiter counts every replica's sends per routing key in the last
60 s from the outbox, on every send

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_outbox_routing_key_sent_at", "outbox", ["routing_key", "sent_at"])


def downgrade() -> None:
    op.drop_index("ix_outbox_routing_key_sent_at", table_name="outbox")
