"""incidents.state_event_at: the occurred_at of the newest webhook that moved the link (acknowledged, unacknowledged,
resolved, reopened), apart from last_event_at (the newest that carried the incident's status and policy). A
priority change or a reassignment delivered before an earlier acknowledge or reopen no longer makes that move
look stale. Existing rows start from last_event_at, as they were judged before.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("incidents", schema=None) as batch_op:
        batch_op.add_column(sa.Column("state_event_at", sa.DateTime(timezone=True), nullable=True))
    op.execute("UPDATE incidents SET state_event_at = last_event_at")


def downgrade() -> None:
    with op.batch_alter_table("incidents", schema=None) as batch_op:
        batch_op.drop_column("state_event_at")
