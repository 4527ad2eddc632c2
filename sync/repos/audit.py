"""The audit log: who did what and when (a silence added or expired, a dead letter retried …). All its SQL.

:func:`record` is called in the same transaction as the action it records, so an action is never without its
entry (nor an entry without its action). Detail text is redacted: a secret pasted into a comment stays out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, insert, select
from sqlalchemy.engine import RowMapping

from kernel import jsonutil
from kernel.redact import redact
from sync.schema import audit_log

ACTOR_MAX = 200
ACTION_MAX = 64
TARGET_MAX = 255


@dataclass(frozen=True, slots=True)
class AuditEntry:
    id: int
    at: datetime
    actor: str
    action: str
    target: str
    detail: Mapping[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "at": self.at.isoformat(),
            "actor": self.actor,
            "action": self.action,
            "target": self.target,
            "detail": dict(self.detail),
        }


def _entry(row: RowMapping) -> AuditEntry:
    detail = jsonutil.loads(row["detail"]) if row["detail"] else {}
    return AuditEntry(row["id"], row["at"], row["actor"], row["action"], row["target"], detail)


def record(
    conn: Connection, actor: str, action: str, target: str, detail: Mapping[str, Any], now: datetime
) -> AuditEntry:
    """Append one entry (``action`` such as ``silence.add``, ``target`` such as ``silence:3``)."""
    name = actor.strip()
    if not name:
        raise ValueError("an audit entry needs an actor")
    entry = {
        "actor": redact(name)[:ACTOR_MAX],
        "action": action[:ACTION_MAX],
        "target": target[:TARGET_MAX],
        "detail": redact(jsonutil.dumps(dict(detail))),
    }
    new_id = conn.execute(insert(audit_log).returning(audit_log.c.id), {"at": now, **entry}).scalar_one()
    return AuditEntry(new_id, now, entry["actor"], entry["action"], entry["target"], jsonutil.loads(entry["detail"]))


def list_entries(conn: Connection, limit: int, before_id: int | None = None) -> list[AuditEntry]:
    """The newest ``limit`` entries, newest first; the next page starts ``before_id`` the last one (keyset)."""
    stmt = select(audit_log).order_by(audit_log.c.id.desc()).limit(limit)
    if before_id is not None:
        stmt = stmt.where(audit_log.c.id < before_id)
    return [_entry(r) for r in conn.execute(stmt).mappings()]


__all__ = ["AuditEntry", "list_entries", "record"]
