"""A ticket is (system, connection, id) everywhere: ``connection`` on changes, tickets, links, outbox and
decisions, filled with ``source`` for existing rows (every row so far belongs to its system's default
connection, which is named after the system); the unique keys and ticket indexes include it. The columns
that hold a connection's name (``cursors.source``, ``outbox.destination``) grow to its 40 characters.

Dedup keys are not touched: a default connection's keys stay ``ticketpager/<system>/<id>/…``, so every open
incident is resolved under the key it was triggered with (docs/architecture.md, "Connections").

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op
from alembic.operations import BatchOperations

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

CONNECTION = sa.String(length=64)
TABLES = ("changes", "tickets", "links", "outbox", "decisions")

PENDING = sa.text("status = 'pending'")
RECHECK = sa.text("recheck")


def _partial(batch_op: BatchOperations, name: str, columns: list[str], where: sa.TextClause) -> None:
    batch_op.create_index(name, columns, unique=False, sqlite_where=where, postgresql_where=where)


def upgrade() -> None:
    # partial indexes go first and come back explicitly: a SQLite batch copy must not lose their WHERE
    op.drop_index("ix_changes_ticket_pending", table_name="changes")
    op.drop_index("ix_tickets_recheck", table_name="tickets")
    op.drop_index("ix_decisions_ticket", table_name="decisions")
    for table in TABLES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(sa.Column("connection", CONNECTION, nullable=True))
        op.execute(f"UPDATE {table} SET connection = source")  # noqa: S608 - table names of this module

    with op.batch_alter_table("changes", schema=None) as batch_op:
        batch_op.alter_column("connection", existing_type=CONNECTION, nullable=False)
        batch_op.drop_constraint("uq_changes_source_delivery_id", type_="unique")
        batch_op.create_unique_constraint(
            "uq_changes_source_connection_delivery_id", ["source", "connection", "delivery_id"]
        )
    with op.batch_alter_table("changes", schema=None) as batch_op:
        _partial(batch_op, "ix_changes_ticket_pending", ["source", "connection", "ticket_id", "id"], PENDING)

    with op.batch_alter_table("tickets", schema=None) as batch_op:
        batch_op.alter_column("connection", existing_type=CONNECTION, nullable=False)
        batch_op.drop_constraint("pk_tickets", type_="primary")
        batch_op.create_primary_key("pk_tickets", ["source", "connection", "ticket_id"])
    with op.batch_alter_table("tickets", schema=None) as batch_op:
        _partial(batch_op, "ix_tickets_recheck", ["source", "connection", "ticket_id"], RECHECK)

    with op.batch_alter_table("links", schema=None) as batch_op:
        batch_op.alter_column("connection", existing_type=CONNECTION, nullable=False)
        batch_op.drop_constraint("uq_links_source_ticket_id_rule", type_="unique")
        batch_op.create_unique_constraint(
            "uq_links_source_connection_ticket_id_rule", ["source", "connection", "ticket_id", "rule"]
        )

    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.alter_column("connection", existing_type=CONNECTION, nullable=False)
        batch_op.alter_column("destination", existing_type=sa.String(length=32), type_=CONNECTION)

    with op.batch_alter_table("decisions", schema=None) as batch_op:
        batch_op.alter_column("connection", existing_type=CONNECTION, nullable=False)
        batch_op.create_index("ix_decisions_ticket", ["source", "connection", "ticket_id", "id"], unique=False)

    with op.batch_alter_table("cursors", schema=None) as batch_op:
        batch_op.alter_column("source", existing_type=sa.String(length=32), type_=CONNECTION)


def downgrade() -> None:
    """Back to one connection per system: rows of named connections are dropped (their ids may collide with
    the default connection's)."""
    for table in TABLES:
        op.execute(f"DELETE FROM {table} WHERE connection != source")  # noqa: S608 - table names of this module
    op.drop_index("ix_changes_ticket_pending", table_name="changes")
    op.drop_index("ix_tickets_recheck", table_name="tickets")
    op.drop_index("ix_decisions_ticket", table_name="decisions")
    with op.batch_alter_table("cursors", schema=None) as batch_op:
        batch_op.alter_column("source", existing_type=CONNECTION, type_=sa.String(length=32))
    with op.batch_alter_table("decisions", schema=None) as batch_op:
        batch_op.drop_column("connection")
        batch_op.create_index("ix_decisions_ticket", ["source", "ticket_id", "id"], unique=False)
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_column("connection")
        batch_op.alter_column("destination", existing_type=CONNECTION, type_=sa.String(length=32))
    with op.batch_alter_table("links", schema=None) as batch_op:
        batch_op.drop_constraint("uq_links_source_connection_ticket_id_rule", type_="unique")
        batch_op.create_unique_constraint("uq_links_source_ticket_id_rule", ["source", "ticket_id", "rule"])
        batch_op.drop_column("connection")
    with op.batch_alter_table("tickets", schema=None) as batch_op:
        batch_op.drop_constraint("pk_tickets", type_="primary")
        batch_op.create_primary_key("pk_tickets", ["source", "ticket_id"])
        batch_op.drop_column("connection")
    with op.batch_alter_table("tickets", schema=None) as batch_op:
        _partial(batch_op, "ix_tickets_recheck", ["source", "ticket_id"], RECHECK)
    with op.batch_alter_table("changes", schema=None) as batch_op:
        batch_op.drop_constraint("uq_changes_source_connection_delivery_id", type_="unique")
        batch_op.create_unique_constraint("uq_changes_source_delivery_id", ["source", "delivery_id"])
        batch_op.drop_column("connection")
    with op.batch_alter_table("changes", schema=None) as batch_op:
        _partial(batch_op, "ix_changes_ticket_pending", ["source", "ticket_id", "id"], PENDING)
