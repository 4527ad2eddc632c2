"""replicas.dry_run: whether the replica runs in dry run. A dry run logs pages instead of sending them and marks them
sent; beside a live instance on one database it would take that instance's pages, so a live ``serve`` refuses to
start while a dry-run replica heartbeats, and a dry run refuses a database holding a live instance's work
(ticketpager.service.Service.refuse_to_share). Backward compatible: an older replica's heartbeat, written without
the column, counts as a live one (false).

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-05
"""

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("replicas", schema=None) as batch_op:
        batch_op.add_column(sa.Column("dry_run", sa.Boolean(), server_default=sa.text("(false)"), nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("replicas", schema=None) as batch_op:
        batch_op.drop_column("dry_run")
