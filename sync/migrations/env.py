"""Alembic environment: runs on the connection the store hands over (``config.attributes['connection']``).

On PostgreSQL the whole upgrade holds an advisory lock, so replicas starting together migrate once.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import text

from sync.schema import metadata

MIGRATION_LOCK_ID = 0x7469636B  # "tick": pg_advisory_lock key shared by every replica

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
if connection.dialect.name == "postgresql":
    connection.execute(text("SELECT pg_advisory_lock(:k)"), {"k": MIGRATION_LOCK_ID})
try:
    with context.begin_transaction():
        context.run_migrations()
finally:
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": MIGRATION_LOCK_ID})
        connection.commit()
