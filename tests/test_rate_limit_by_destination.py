"""The rate limiter's view of the other replicas counts the sends of its own destination only: a second incident
destination's event sent under the same limit key by another replica does not hold back a PagerDuty page."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sync.repos import outbox
from sync.store import Store

T0 = datetime(2026, 12, 4, 9, 0, tzinfo=UTC)
KEY = "R0UTINGKEY000000000000000000000A"


def test_sends_elsewhere_counts_only_the_destinations_own_sends(db_url: str) -> None:
    store = Store(db_url)
    try:
        store.upgrade()
        with store.begin() as conn:
            for destination in ("pagerduty", "opsgenie"):
                outbox.enqueue(
                    conn, kind="event", destination=destination, source="jira", connection="jira", ticket_id="1",
                    ticket_key="OPS-1",
                    rule="r", action="trigger", dedup_key=f"dk-{destination}", generation=1, limit_key=KEY,
                    body="{}", change_id=None, now=T0,
                )  # fmt: skip
        with store.begin() as conn:  # another replica claims and sends both
            rows = outbox.Claims(takeover=False).claim(conn, 10, T0, T0, worker="other/0", until=T0 + timedelta(60))
            assert len(rows) == 2
            assert outbox.mark_sent_many(conn, [(row["id"], T0, False) for row in rows], "other/0") == set()

        since = T0 - timedelta(minutes=1)
        assert store.sends_elsewhere("pagerduty", KEY, since, "mine") == [T0]
        assert store.sends_elsewhere("opsgenie", KEY, since, "mine") == [T0]
        assert store.sends_elsewhere("pagerduty", KEY, since, "other") == []  # our own sends are counted apart
        assert store.sends_elsewhere("pagerduty", KEY, T0, "mine") == []  # outside the window
    finally:
        store.dispose()
