"""outbox.destination: each row names the destination that sends it (outbound actions as data, destinations
as plug-ins); existing rows are moved: incident events to 'pagerduty', ticket write-backs to the ticket's
source system (the connector that writes the note)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.add_column(sa.Column("destination", sa.String(length=32), nullable=True))
    op.execute("UPDATE outbox SET destination = 'pagerduty' WHERE kind = 'event'")
    op.execute("UPDATE outbox SET destination = source WHERE kind = 'writeback'")


def downgrade() -> None:
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_column("destination")
