"""The stored form of a change: every field of a ticket survives storage and comes back equal."""

from __future__ import annotations

import dataclasses
from datetime import timedelta, timezone

from kernel import jsonutil
from kernel.model import FieldChange, Origin, StatusCategory, Ticket, TicketChange
from tests.factories import T0, change, ticket


def full_ticket() -> Ticket:
    berlin = timezone(timedelta(hours=1))
    return dataclasses.replace(
        ticket(
            "10042",
            category=StatusCategory.IN_PROGRESS,
            description="Customers see 502 on /checkout",
            assignee="Ana On-Call",
            assignment_group="Network",
            requester="Sam Support",
            organization="Gold Corp",
            labels=("customer-impact", "eu-west"),
            custom_fields={"Tier": "Gold", "customfield_10010": {"value": "Gold"}},
            attributes={"project": "OPS", "components": ["checkout"]},
            raw={"issue": {"id": "10042", "fields": {"big": 2**70}}},
        ),
        created=(T0 - timedelta(hours=2)).astimezone(berlin),
        connection="eng-jira",
    )


def test_every_ticket_field_is_stored() -> None:
    stored = full_ticket().to_json()
    assert set(stored) == {f.name for f in dataclasses.fields(Ticket)}


def test_the_default_connection_is_the_system_and_is_stored_as_before() -> None:
    plain = ticket("10042")
    assert plain.connection == plain.source == "jira"
    assert "connection" not in plain.to_json()  # stored JSON and version hashes of existing tickets unchanged
    assert Ticket.from_json(plain.to_json()).connection == "jira"
    named = dataclasses.replace(plain, connection="eng-jira")
    assert named.to_json()["connection"] == "eng-jira"
    assert named.version_hash() != plain.version_hash()


def test_a_change_is_stamped_with_the_connection_it_came_through() -> None:
    original = change(ticket("7"))
    assert original.connection == "jira" and original.in_connection("jira") is original
    stamped = original.in_connection("eng-jira")
    assert stamped.connection == "eng-jira" and stamped.ticket.id == "7"
    assert TicketChange.from_json(jsonutil.loads(jsonutil.dumps(stamped.to_json()))).connection == "eng-jira"


def test_ticket_round_trips_through_stored_json() -> None:
    original = full_ticket()
    back = Ticket.from_json(jsonutil.loads(jsonutil.dumps(original.to_json())))
    assert back == original
    assert back.created == original.created and back.created is not None and back.created.utcoffset() == timedelta(0)
    assert back.raw["issue"]["fields"]["big"] == 2**70  # beyond 64 bits: the stdlib fallback keeps it


def test_change_round_trips_with_what_changed() -> None:
    original = change(
        full_ticket(),
        changes=(FieldChange("priority", "High", "Highest"), FieldChange("labels", [], ["x"])),
        origin=Origin.POLL,
    )
    back = TicketChange.from_json(jsonutil.loads(jsonutil.dumps(original.to_json())))
    assert back == original


def test_a_ticket_without_created_stores_null() -> None:
    t = dataclasses.replace(full_ticket(), created=None)
    assert t.to_json()["created"] is None
    assert Ticket.from_json(t.to_json()).created is None
