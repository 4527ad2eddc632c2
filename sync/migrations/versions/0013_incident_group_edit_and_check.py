"""incidents.group_edit_at / group_edit_update / mirrored_group: a person's newest group change on the ticket, the
incident update it asked for (and whether it was sent), and the groups our set_group wrote whose echo has not come
back. A PagerDuty move older than that edit, delivered late, no longer sets the ticket's group back, and the update
the edit asked for is sent after all. Existing rows start with none recorded (as they were judged before).

incidents.checked_at / reconciled_status / reconciled_at: the incident check (sync.reconcile) asks PagerDuty's REST API about open
incidents with no recent news, and applies a status change no webhook told; the webhook of that change, if it
arrives after all, then writes nothing again.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("incidents", schema=None) as batch_op:
        batch_op.add_column(sa.Column("group_edit_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("group_edit_update", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("mirrored_group", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("checked_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("reconciled_status", sa.String(16), nullable=True))
        batch_op.add_column(sa.Column("reconciled_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("incidents", schema=None) as batch_op:
        batch_op.drop_column("reconciled_at")
        batch_op.drop_column("reconciled_status")
        batch_op.drop_column("checked_at")
        batch_op.drop_column("mirrored_group")
        batch_op.drop_column("group_edit_update")
        batch_op.drop_column("group_edit_at")
