"""The audit log: who did what and when in the admin console (retries, silences). Table ``audit_log``.

Minimal version written by the console branch (the silences branch owns this module: on a merge conflict,
keep that one — the interface is the same: :func:`record` and :func:`list_entries`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, insert, select

from kernel import jsonutil
from kernel.redact import redact
from sync.schema import audit_log


@dataclass(frozen=True)
class AuditEntry:
    id: int
    at: datetime
    actor: str
    action: str
    target: str
    detail: dict[str, Any] | None


def record(conn: Connection, actor: str, action: str, target: str, detail: Any, now: datetime) -> None:
    """Append one entry inside the caller's transaction; the detail is stored as JSON, redacted."""
    text = None if detail is None else redact(jsonutil.dumps(detail))
    conn.execute(
        insert(audit_log).values(at=now, actor=actor[:200], action=action[:64], target=target[:255], detail=text)
    )


def list_entries(conn: Connection, limit: int = 50, before_id: int | None = None) -> list[AuditEntry]:
    """The newest entries first, ``limit`` of them, older than ``before_id`` if given (keyset pagination)."""
    stmt = select(audit_log).order_by(audit_log.c.id.desc()).limit(limit)
    if before_id is not None:
        stmt = stmt.where(audit_log.c.id < before_id)
    return [
        AuditEntry(
            id=int(r["id"]),
            at=r["at"],
            actor=r["actor"],
            action=r["action"],
            target=r["target"],
            detail=None if r["detail"] is None else jsonutil.loads(r["detail"]),
        )
        for r in conn.execute(stmt).mappings()
    ]
