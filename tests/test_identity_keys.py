"""A ticket's connection in its dedup keys and its notes (issue 17, identity): a default connection's keys and
note bodies are the ones every earlier version wrote; a named connection's are its own, and its note never
goes to another instance's write-back."""

from __future__ import annotations

from typing import Any

import pytest

from connectors.base import Connector, NoteDestination
from kernel.errors import PermanentError
from kernel.lifecycle import DEDUP_KEY_MAX, dedup_key_for
from kernel.model import EventAction, Outbound, TicketRef, incident_note


def test_a_default_connections_dedup_key_is_unchanged_and_a_named_ones_names_it() -> None:
    assert dedup_key_for("zendesk", "4711", "p1", 1) == "ticketpager/zendesk/4711/p1/1"
    assert dedup_key_for("zendesk", "4711", "p1", 1, "zendesk") == "ticketpager/zendesk/4711/p1/1"
    assert dedup_key_for("zendesk", "4711", "p1", 1, "acme-zendesk") == "ticketpager/zendesk/acme-zendesk/4711/p1/1"


def test_long_dedup_keys_of_two_connections_stay_apart_and_fit() -> None:
    rule = "r" * 300
    default, named = dedup_key_for("jira", "1", rule, 1), dedup_key_for("jira", "1", rule, 1, "a" * 40)
    assert default != named and max(len(default), len(named)) <= DEDUP_KEY_MAX
    assert default.startswith("ticketpager/jira/sha256:") and named.startswith(f"ticketpager/jira/{'a' * 40}/sha256:")


def _no_connector() -> Connector[Any]:
    raise AssertionError("a refused note must not reach a connector")


def _outbound(ticket: TicketRef, destination: NoteDestination) -> Outbound:
    note = incident_note("PagerDuty", ticket, EventAction.TRIGGER, "ticketpager/zendesk/4711/p1/1", "p1", 9)
    body = destination.render(note).body
    return Outbound(9, destination.name, "writeback", "trigger", body, "", ticket.key, 0)


def test_a_note_renders_as_before_for_a_default_connection_and_names_a_named_one() -> None:
    default = NoteDestination("zendesk", _no_connector)
    item = _outbound(TicketRef("zendesk", "4711", "#4711"), default)
    assert '"connection"' not in item.body  # rows queued by earlier versions look the same
    assert NoteDestination.note(item.body).ticket.connection == "zendesk"
    named = NoteDestination("acme-zendesk", _no_connector)
    item = _outbound(TicketRef("zendesk", "4711", "#4711", connection="acme-zendesk"), named)
    assert NoteDestination.note(item.body).ticket.connection == "acme-zendesk"


def test_a_note_of_another_connection_is_refused_not_written_on_the_wrong_instance() -> None:
    acme = NoteDestination("acme-zendesk", _no_connector)
    item = _outbound(TicketRef("zendesk", "4711", "#4711"), NoteDestination("zendesk", _no_connector))
    with pytest.raises(PermanentError, match="connection 'zendesk' reached the write-back of 'acme-zendesk'"):
        acme.send(item)
