"""The state store's tables (SQLAlchemy Core). Alembic migrations in ``sync/migrations`` create them.

* ``changes``   — every received change, deduped on (source, connection, delivery_id); the engine's work queue.
* ``tickets``   — each ticket's last processed version (and its snapshot, for diffs and time rules).
* ``links``     — ticket ↔ rule ↔ dedup_key ↔ routing key ↔ incident state, with a generation counter.
* ``outbox``    — outbound actions (incident events, ticket notes), each with its destination: pending /
  sent / dead, attempts, next attempt.
* ``cursors``   — poll cursors and the last poll error per connection (the ``source`` column holds its name).

A ticket is (source, connection, ticket_id) everywhere: ``source`` is its system, ``connection`` the instance
of that system it came from (the default connection is named after the system; docs/architecture.md,
"Connections").
* ``leases``    — which replica runs a singleton job (a poller, the time-rule scheduler) until when.
* ``replicas``  — each running replica's heartbeat: a live one's claims and leases are never taken over.
* ``decisions`` — the decision log: per change, every rule's verdict and why, and what was sent.
* ``pagerduty_inbox`` — PagerDuty v3 webhooks as received (verified raw body), deduped on the signed ``event.id``: the
  reverse worker's work queue (:mod:`sync.reverse`).
* ``incidents`` — PagerDuty incident ↔ our ``dedup_key`` (learned once: PagerDuty does not put the key on an
  Events-API incident's webhook), with what the last event said of the incident.
* ``silences``  — mute paging for tickets matching a rule condition, for a time window (``sync/repos/silences.py``).
* ``silenced_tickets`` — tickets whose trigger a silence held, until when: re-evaluated once it ends.
* ``audit_log`` — who did what and when (silences, retries), for the admin console (``sync/repos/audit.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Dialect,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects import sqlite
from sqlalchemy.types import TypeDecorator, TypeEngine

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "pk": "pk_%(table_name)s",
    }
)

#: a connection's name (ticketpager/connections.py: at most 40 characters), with room to spare
CONNECTION = String(64)

Id = BigInteger().with_variant(Integer(), "sqlite")  # SQLite only auto-increments INTEGER PRIMARY KEY


class _SQLiteText(sqlite.DATETIME):
    """SQLite's DATETIME (the same DDL, the same stored text, read by its own result processor) whose bound
    values :class:`UTCDateTime` has already formatted: one step per value instead of two (issue 19: every engine
    change binds about eight datetimes, every stored webhook three)."""

    def bind_processor(self, dialect: Dialect) -> None:
        return None

    def literal_processor(self, dialect: Dialect) -> Callable[[Any], str]:
        """The text as an SQL literal (``literal_binds``, ``alembic --sql``): DATETIME's own would format a
        datetime, not the text already made of it."""
        return lambda text: "'" + str(text).replace("'", "''") + "'"


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC in and out, on SQLite (which stores naive text) as on PostgreSQL."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return _SQLiteText()
        return super().load_dialect_impl(dialect)

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store")
        if value.tzinfo is not UTC:
            value = value.astimezone(UTC)
        if dialect.name == "sqlite":  # the text SQLAlchemy's DATETIME stores: 2026-11-27 09:00:00.000000
            return datetime.isoformat(value, " ", "microseconds")[:26]  # without the "+00:00"; a subclass's own
            # isoformat is not used: the stored text must not depend on it
        return value

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


changes = Table(
    "changes",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("source", String(32), nullable=False),
    Column("connection", CONNECTION, nullable=False),
    Column("delivery_id", String(255), nullable=False),
    Column("ticket_id", String(255), nullable=False),
    Column("ticket_updated", UTCDateTime(), nullable=False),
    Column("origin", String(16), nullable=False),
    Column("received_at", UTCDateTime(), nullable=False),
    Column("payload", Text, nullable=True),  # TicketChange JSON; the row is pruned by retention once processed
    Column("status", String(16), nullable=False, server_default="pending"),
    Column("processed_at", UTCDateTime(), nullable=True),
    Column("error", Text, nullable=True),
    UniqueConstraint("source", "connection", "delivery_id"),
    Index(
        "ix_changes_pending",
        "id",
        sqlite_where=text("status = 'pending'"),
        postgresql_where=text("status = 'pending'"),
    ),
    Index("ix_changes_received_at", "received_at"),
    Index(
        "ix_changes_ticket_pending",
        "source",
        "connection",
        "ticket_id",
        "id",
        sqlite_where=text("status = 'pending'"),
        postgresql_where=text("status = 'pending'"),
    ),
    Index(
        "ix_changes_failed",
        "id",
        sqlite_where=text("status = 'failed'"),
        postgresql_where=text("status = 'failed'"),
    ),
)

tickets = Table(
    "tickets",
    metadata,
    Column("source", String(32), primary_key=True),
    Column("connection", CONNECTION, primary_key=True),
    Column("ticket_id", String(255), primary_key=True),
    Column("key", String(255), nullable=False),
    Column("status_category", String(16), nullable=False),
    Column("updated", UTCDateTime(), nullable=False),
    Column("version_hash", String(64), nullable=False),
    Column("snapshot", Text, nullable=True),
    Column("last_change_id", BigInteger, nullable=True),
    Column("open_incidents", Integer, nullable=False, server_default="0"),
    Column("recheck", Boolean, nullable=False, server_default=text("false")),
    Column("processed_at", UTCDateTime(), nullable=False),
    Index(
        "ix_tickets_recheck",
        "source",
        "connection",
        "ticket_id",
        sqlite_where=text("recheck"),
        postgresql_where=text("recheck"),
    ),
    # the console's reads (migration 0011; bench/console.py): newest first, key prefix, by source and state
    Index("ix_tickets_updated", "updated", "source", "ticket_id"),
    Index("ix_tickets_key", "key", postgresql_ops={"key": "text_pattern_ops"}),
    Index("ix_tickets_source_state", "source", "status_category", "updated", "ticket_id"),
)

links = Table(
    "links",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("source", String(32), nullable=False),
    Column("connection", CONNECTION, nullable=False),
    Column("ticket_id", String(255), nullable=False),
    Column("rule", String(200), nullable=False),
    Column("generation", Integer, nullable=False),
    Column("dedup_key", String(255), nullable=False),
    Column("routing_key", String(255), nullable=False),
    Column("state", String(16), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    # a person resolved the incident in PagerDuty while the ticket still matched: the content digest
    # (kernel.lifecycle.content_digest) of the ticket then; no new page while the ticket still has it
    Column("hold_version", String(64), nullable=True),
    UniqueConstraint("source", "connection", "ticket_id", "rule"),
    Index("ix_links_dedup_key", "dedup_key"),
    Index(
        "ix_links_open",
        "state",
        sqlite_where=text("state != 'resolved'"),
        postgresql_where=text("state != 'resolved'"),
    ),
)

outbox = Table(
    "outbox",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("kind", String(16), nullable=False),  # event | writeback
    Column("source", String(32), nullable=False),
    Column("connection", CONNECTION, nullable=False),
    Column("ticket_id", String(255), nullable=False),
    Column("ticket_key", String(255), nullable=False),
    Column("rule", String(200), nullable=False),
    Column("action", String(16), nullable=False),
    Column("dedup_key", String(255), nullable=False),
    Column("generation", Integer, nullable=False),
    Column("routing_key", String(255), nullable=False),
    Column("body", Text, nullable=False),
    Column("status", String(16), nullable=False, server_default="pending"),  # pending | sent | dead | superseded
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("next_attempt_at", UTCDateTime(), nullable=False),
    Column("claimed_until", UTCDateTime(), nullable=True),
    Column("claimed_by", String(64), nullable=True),
    Column("last_error", Text, nullable=True),
    Column("change_id", BigInteger, nullable=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("sent_at", UTCDateTime(), nullable=True),
    # set when the row was queued in dry run (its dry-run mark follows), else when it was marked sent: a dry run
    # refuses a database holding rows without it (a live instance's), see Service.refuse_to_share
    Column("dry_run", Boolean, nullable=False, server_default=text("false")),
    Column("first_attempt_at", UTCDateTime(), nullable=True),  # the retry budget runs from here
    # the destination that sends the row ('pagerduty', a connection's write-back, named after the connection);
    # NULL: written by a version before 0007 during a rolling upgrade (delivered by its kind: see
    # sync.delivery.Delivery.outbound)
    Column("destination", CONNECTION, nullable=True),
    Index(
        "ix_outbox_due",
        "next_attempt_at",
        "id",
        sqlite_where=text("status = 'pending'"),
        postgresql_where=text("status = 'pending'"),
    ),
    Index("ix_outbox_dedup_key", "dedup_key", "id"),
    Index("ix_outbox_routing_key_sent_at", "routing_key", "sent_at"),  # the rate limiter's window
    Index("ix_outbox_dead", "id", sqlite_where=text("status = 'dead'"), postgresql_where=text("status = 'dead'")),
    # delivery latency over 24 h (the console's chart; migration 0011)
    Index(
        "ix_outbox_sent_at",
        "sent_at",
        sqlite_where=text("kind = 'event'"),
        postgresql_where=text("kind = 'event'"),
    ),
)

cursors = Table(
    "cursors",
    metadata,
    Column("source", CONNECTION, primary_key=True),  # the connection's name
    Column("cursor", Text, nullable=True),
    Column("updated_at", UTCDateTime(), nullable=True),
    Column("last_success_at", UTCDateTime(), nullable=True),
    Column("last_error", Text, nullable=True),
    Column("last_error_kind", String(16), nullable=True),
    Column("last_error_at", UTCDateTime(), nullable=True),
)

leases = Table(
    "leases",
    metadata,
    Column("name", String(100), primary_key=True),
    Column("holder", String(100), nullable=False),
    Column("expires_at", UTCDateTime(), nullable=False),
)

replicas = Table(
    "replicas",
    metadata,
    Column("instance", String(100), primary_key=True),  # Service.instance: host-pid-random, new per process
    Column("started_at", UTCDateTime(), nullable=False),
    Column("heartbeat_at", UTCDateTime(), nullable=False),
    # a dry-run replica (migration 0014): a live one refuses to start beside it; an older release writes false
    Column("dry_run", Boolean, nullable=False, server_default=text("false")),
)

decisions = Table(
    "decisions",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("change_id", BigInteger, nullable=True),
    Column("source", String(32), nullable=False),
    Column("connection", CONNECTION, nullable=False),
    Column("ticket_id", String(255), nullable=False),
    Column("ticket_key", String(255), nullable=False),
    Column("at", UTCDateTime(), nullable=False),
    Column("outcome", String(32), nullable=False),
    Column("rules_digest", String(64), nullable=True),
    Column("detail", Text, nullable=True),  # JSON: verdicts with explanations, events planned (keys masked)
    Index("ix_decisions_ticket", "source", "connection", "ticket_id", "id"),
    Index("ix_decisions_at", "at"),
    # pages per hour (the console's chart) and the backtest's "what paged" (migration 0011)
    Index(
        "ix_decisions_paged_at",
        "at",
        sqlite_where=text("outcome = 'paged'"),
        postgresql_where=text("outcome = 'paged'"),
    ),
)

pagerduty_inbox = Table(
    "pagerduty_inbox",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("webhook_id", String(255), nullable=False),  # dedupe key: "event:" + the signed event.id (pdw.dedupe_key)
    Column("event_id", String(255), nullable=False),
    Column("event_type", String(64), nullable=False),
    Column("incident_id", String(64), nullable=True),
    Column("occurred_at", UTCDateTime(), nullable=True),
    Column("received_at", UTCDateTime(), nullable=False),
    Column("body", Text, nullable=False),  # the verified raw body (at most 256 KB), parsed again by the worker
    Column("status", String(16), nullable=False, server_default="pending"),  # pending | done | failed
    Column("outcome", String(32), nullable=True),  # applied, echo, not_ours, failed …
    Column("processed_at", UTCDateTime(), nullable=True),
    Column("error", Text, nullable=True),
    UniqueConstraint("webhook_id"),
    Index(
        "ix_pagerduty_inbox_pending",
        "id",
        sqlite_where=text("status = 'pending'"),
        postgresql_where=text("status = 'pending'"),
    ),
    Index("ix_pagerduty_inbox_received_at", "received_at"),
)

incidents = Table(
    "incidents",
    metadata,
    Column("incident_id", String(64), primary_key=True),
    Column("dedup_key", String(255), nullable=False),
    Column("number", Integer, nullable=True),
    Column("html_url", Text, nullable=True),
    Column("status", String(16), nullable=True),
    Column("escalation_policy_id", String(64), nullable=True),
    Column("learned_by", String(16), nullable=False),  # rest | incident_key | title
    # occurred_at of the newest applied event that carried the incident (its status and policy: the row's snapshot)
    Column("last_event_at", UTCDateTime(), nullable=True),
    # … and of the newest that moved the link (acknowledged, unacknowledged, resolved, reopened; migration 0012)
    Column("state_event_at", UTCDateTime(), nullable=True),
    # a person's newest group change on the ticket (the ticket's time; migration 0013): PagerDuty news older than
    # it sets no group; and the incident update it asked for, not sent because the incident looked there already
    Column("group_edit_at", UTCDateTime(), nullable=True),
    Column("group_edit_update", Text, nullable=True),  # JSON of a kernel.model.IncidentUpdate
    # JSON list of the groups our set_group wrote onto the ticket (from PagerDuty moves) whose ticket webhook has
    # not come back: those echoes are not a person's edit, and send nothing
    Column("mirrored_group", Text, nullable=True),
    # the incident check (sync.reconcile): when PagerDuty's REST API was last asked about the incident, and the
    # status the newest state move applied from it (its webhook, if it comes after all, writes nothing again)
    Column("checked_at", UTCDateTime(), nullable=True),
    Column("reconciled_status", String(16), nullable=True),
    Column("reconciled_at", UTCDateTime(), nullable=True),
    Column("updated_at", UTCDateTime(), nullable=False),
    Index("ix_incidents_dedup_key", "dedup_key"),
)

silences = Table(
    "silences",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("matchers", Text, nullable=False),  # JSON: a rule's `when` mapping (validated by rules/ when added)
    Column("starts_at", UTCDateTime(), nullable=False),
    Column("ends_at", UTCDateTime(), nullable=False),
    Column("comment", Text, nullable=False),
    Column("author", String(200), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("expired_at", UTCDateTime(), nullable=True),  # set when expired before ends_at
    Column("expired_by", String(200), nullable=True),
    Index("ix_silences_ends_at", "ends_at"),  # the active ones: ends_at > now (a range, never a full scan)
)

silenced_tickets = Table(
    "silenced_tickets",
    metadata,
    Column("silence_id", BigInteger, primary_key=True),
    Column("source", String(32), primary_key=True),
    Column("connection", CONNECTION, primary_key=True),
    Column("ticket_id", String(255), primary_key=True),
    Column("until", UTCDateTime(), nullable=False),  # the silence's end (moved to now when it is expired)
    Column("at", UTCDateTime(), nullable=False),  # first held
    Index("ix_silenced_tickets_until", "until"),  # due re-evaluations: until <= now
)

audit_log = Table(
    "audit_log",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("at", UTCDateTime(), nullable=False),
    Column("actor", String(200), nullable=False),
    Column("action", String(64), nullable=False),  # silence.add | silence.expire | deadletter.retry …
    Column("target", String(255), nullable=False),  # silence:3, outbox:17 …
    Column("detail", Text, nullable=True),  # JSON
)
