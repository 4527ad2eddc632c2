"""incidents.group_edit_at / group_edit_update / mirrored_group: a person's newest group change on the ticket, the
incident update it asked for and did not send (the incident looked there already), and the group our set_group
last wrote. A PagerDuty move older than that edit, delivered late, no longer sets the ticket's group back, and the
update the edit asked for is sent after all. Existing rows start with none recorded (as they were judged before).

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


def downgrade() -> None:
    with op.batch_alter_table("incidents", schema=None) as batch_op:
        batch_op.drop_column("mirrored_group")
        batch_op.drop_column("group_edit_update")
        batch_op.drop_column("group_edit_at")
