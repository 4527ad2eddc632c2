"""What the console says a pending outbox row waits for (``outbox.waiting_on``, in Python over the rows it shows)
is what the delivery workers' claims hold back (the SQL rule, ``_waits_for_an_earlier_row``): both read
``ORDERED_KINDS``, and this checks they agree on any mix of kinds, incidents and statuses."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, select, update

from kernel.model import IncidentAction, IncidentUpdate, TicketNote, TicketUpdate
from sync.repos import outbox as repo
from sync.schema import outbox
from sync.store import Store

KINDS = sorted({IncidentAction.KIND, IncidentUpdate.KIND, TicketNote.KIND, TicketUpdate.KIND})
NOW = datetime(2026, 12, 5, 9, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    path: Path = tmp_path_factory.mktemp("outbox") / "tp.db"
    store = Store(f"sqlite:///{path}")
    store.upgrade()
    yield store
    store.dispose()


def _row(kind: str, incident: str) -> dict[str, object]:
    return repo.row(
        kind=kind, destination="pagerduty", source="jira", connection="jira", ticket_id="1", ticket_key="OPS-1",
        rule="ops", action="trigger", dedup_key=incident, generation=1, limit_key="k", body="{}", change_id=None,
        now=NOW,
    )  # fmt: skip


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(KINDS), st.sampled_from(["inc-a", "inc-b"]), st.sampled_from(["pending", "sent", "dead"])
        ),
        max_size=10,
    )
)
def test_the_console_holds_back_exactly_the_rows_the_claims_do(store: Store, rows: list[tuple[str, str, str]]) -> None:
    with store.begin() as conn:
        conn.execute(delete(outbox))
        repo.enqueue_rows(conn, [_row(kind, incident) for kind, incident, _ in rows])
        ids = conn.execute(select(outbox.c.id).order_by(outbox.c.id)).scalars().all()
        for id_, (_, _, status) in zip(ids, rows, strict=True):
            conn.execute(update(outbox).where(outbox.c.id == id_).values(status=status))
        stored = [dict(r) for r in conn.execute(select(outbox)).mappings()]
        held_by_claims = set(
            conn.execute(
                select(outbox.c.id).where(outbox.c.status == "pending", repo._waits_for_an_earlier_row(None))  # noqa: SLF001
            ).scalars()
        )
    said = repo.waiting_on(stored)
    assert set(said) == held_by_claims
    sides = {kind: next((side for side in repo.ORDERED_KINDS if kind in side), None) for kind in KINDS}
    for waiting, head in said.items():  # the row it waits behind: the first pending one of its incident and side
        row = next(r for r in stored if r["id"] == waiting)
        same = [r for r in stored if r["dedup_key"] == row["dedup_key"] and sides[r["kind"]] == sides[row["kind"]]]
        ahead = [r["id"] for r in same if r["status"] == "pending"]
        assert head == min(ahead) < waiting
