"""Error text a version without the redaction stored is redacted when it is shown (issue 13, item 5): after
an upgrade, ``ticketpager status``, ``/readyz`` (with the token), ``/admin/status`` and ``deadletters list``
show no credential an old row still holds."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import insert

from sync.schema import cursors, outbox
from sync.store import Store

NOW = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
BASIC = "dXNlcjpzM2NyZXQtdG9rZW4="  # an echoed Basic credential: credential-shaped, no setting needed
ROUTING_KEY = "R0OLDROWKEY000000000000000000042"


def test_old_rows_are_redacted_when_shown(db_url: str) -> None:
    store = Store(db_url)
    store.upgrade()
    try:
        with store.begin() as conn:  # as the previous version stored them: raw
            conn.execute(
                insert(cursors).values(
                    source="jira",
                    last_error=f"jira answered HTTP 401: echo: Authorization: Basic {BASIC}",
                    last_error_kind="permanent",
                    last_error_at=NOW,
                )
            )
            conn.execute(
                insert(outbox).values(
                    kind="event", source="jira", connection="jira", ticket_id="1", ticket_key="OPS-1", rule="r",
                    action="trigger",
                    dedup_key="d", generation=1, routing_key=ROUTING_KEY, body="{}", status="dead",
                    next_attempt_at=NOW, created_at=NOW,
                    last_error=f"PagerDuty answered HTTP 400: routing key {ROUTING_KEY} unknown",
                )
            )
        shown = {
            "status": str(store.status().cursors),
            "permanent poll errors": str(store.permanent_poll_errors()),
            "dead letters": str([row["last_error"] for row in store.dead_letters()]),
        }
    finally:
        store.dispose()
    for where, text in shown.items():
        assert "HTTP 40" in text, (where, text)
        assert BASIC not in text and ROUTING_KEY not in text, (where, text)
