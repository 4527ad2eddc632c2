"""console read paths: indexes for the ticket list, key-prefix search, the 24 h chart and the backtest
(measured by bench/console.py on 1 M tickets / 10 M decisions: docs/performance.md, "Admin console")

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tickets", schema=None) as batch_op:
        batch_op.create_index("ix_tickets_updated", ["updated", "source", "ticket_id"], unique=False)
        batch_op.create_index("ix_tickets_key", ["key"], unique=False, postgresql_ops={"key": "text_pattern_ops"})
        batch_op.create_index(
            "ix_tickets_source_state", ["source", "status_category", "updated", "ticket_id"], unique=False
        )
    with op.batch_alter_table("decisions", schema=None) as batch_op:
        batch_op.create_index(
            "ix_decisions_paged_at",
            ["at"],
            unique=False,
            sqlite_where=sa.text("outcome = 'paged'"),
            postgresql_where=sa.text("outcome = 'paged'"),
        )
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.create_index(
            "ix_outbox_sent_at",
            ["sent_at"],
            unique=False,
            sqlite_where=sa.text("kind = 'event'"),
            postgresql_where=sa.text("kind = 'event'"),
        )


def downgrade() -> None:
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_index("ix_outbox_sent_at")
    with op.batch_alter_table("decisions", schema=None) as batch_op:
        batch_op.drop_index("ix_decisions_paged_at")
    with op.batch_alter_table("tickets", schema=None) as batch_op:
        batch_op.drop_index("ix_tickets_source_state")
        batch_op.drop_index("ix_tickets_key")
        batch_op.drop_index("ix_tickets_updated")
