"""Alembic environment: runs on the connection the store hands over (``config.attributes['connection']``).

On PostgreSQL the whole upgrade holds an advisory lock, so replicas starting together migrate once; a process
that finds it taken says so in one line, then waits.
"""

from __future__ import annotations

import logging

from alembic import context
from sqlalchemy import text

from sync.db import MIGRATION_LOCK_ID, MIGRATION_LOCK_WAIT
from sync.schema import metadata

log = logging.getLogger("ticketpager.db")

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
postgresql = connection.dialect.name == "postgresql"
if postgresql:
    # a session lock: it outlives the commit below, which ends the transaction the SELECT began, so the
    # migrations run in a transaction of their own that is committed *before* the lock is released (the next
    # replica then sees the new revision instead of creating the same tables again)
    if not connection.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": MIGRATION_LOCK_ID}).scalar():
        log.info(MIGRATION_LOCK_WAIT)
        connection.execute(text("SELECT pg_advisory_lock(:k)"), {"k": MIGRATION_LOCK_ID})
    connection.commit()
try:
    with context.begin_transaction():
        context.run_migrations()
    if connection.in_transaction():
        connection.commit()
except BaseException:
    if connection.in_transaction():
        connection.rollback()
    raise
finally:
    if postgresql:
        connection.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": MIGRATION_LOCK_ID})
        connection.commit()
