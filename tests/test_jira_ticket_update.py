"""Jira ticket updates from PagerDuty's side (issue 16, item 3), through the ticketing destination, against HTTP
mocked at the wire with the real ``jira`` client: internal or public comment once per marker, transition by
target status or category with its required fields, a clear error listing the workflow's transitions, the
assignment group field, the remote link idempotent by global id, and no secret in any error."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

import pytest
import requests
import responses
from pydantic import SecretStr

from connectors.base import NoteDestination
from connectors.jira import JiraConnector
from kernel import redact
from kernel.clock import FakeClock
from kernel.errors import PermanentError
from kernel.model import Outbound, StatusCategory, TicketRef, TicketUpdate, Transition
from kernel.retry import RetryPolicy
from ticketpager.settings import JiraSettings

BASE = "https://jira.example.com"
API = f"{BASE}/rest/api/2"
TOKEN = "pat-VERY-SECRET-TOKEN-0123456789"
ISSUE = f"{API}/issue/10042"
COMMENTS = f"{ISSUE}/comment"
TRANSITIONS = f"{ISSUE}/transitions"
LINKS = f"{ISSUE}/remotelink"
INCIDENT_URL = "https://acme.pagerduty.com/incidents/Q1ABCDEF"
REF = TicketRef("jira", "10042", "OPS-12", f"{BASE}/browse/OPS-12")


def connector(**extra: Any) -> JiraConnector:
    values: dict[str, Any] = {"enabled": True, "url": BASE, "api_token": SecretStr(TOKEN), "deployment": "datacenter"}
    values.update(extra)
    return JiraConnector(
        JiraSettings(**values),
        clock=FakeClock(datetime(2026, 11, 27, 9, 0, tzinfo=UTC)),
        session=requests.Session(),
        retry=RetryPolicy(max_attempts=1),  # as the delivery worker builds it: the outbox retries
    )


def update(**extra: Any) -> TicketUpdate:
    values: dict[str, Any] = {
        "ticket": REF,
        "marker": "tp:Q1ABCDEF:PEV0001:ops-p1",
        "comment": "Acknowledged in PagerDuty by Jane Doe",
    }
    values.update(extra)
    return TicketUpdate(**values)


def comments(*bodies: str) -> dict[str, Any]:
    items = [{"id": str(n), "body": b, "author": {"name": "someone"}} for n, b in enumerate(bodies)]
    return {"startAt": 0, "maxResults": 100, "total": len(items), "comments": items}


def status(name: str, category: str) -> dict[str, Any]:
    return {"fields": {"status": {"name": name, "statusCategory": {"key": category}}, "components": []}}


def transition(tid: str, name: str, to: str, category: str, **fields: Any) -> dict[str, Any]:
    return {"id": tid, "name": name, "to": {"name": to, "statusCategory": {"key": category}}, "fields": fields}


RESOLUTION = {
    "resolution": {
        "required": True,
        "name": "Resolution",
        "hasDefaultValue": False,
        "allowedValues": [{"id": "1", "name": "Done"}, {"id": "2", "name": "Won't Do"}],
    }
}
WORKFLOW = [
    transition("11", "Start work", "In Progress", "indeterminate"),
    transition("31", "Close issue", "Closed", "done", **RESOLUTION),
]


def send(c: JiraConnector, action: TicketUpdate) -> None:
    """Through the destination, as the delivery worker does: rendered (stored), then sent from the body."""
    dest = NoteDestination("jira", lambda: c)
    body = dest.render(action).body
    dest.send(Outbound(1, "jira", TicketUpdate.KIND, "acknowledged", body, "", "OPS-12", 0), timeout=None)


def posted(rsp: Any) -> list[dict[str, Any]]:
    return [json.loads(call.request.body) for call in rsp.calls]


def test_internal_comment_once_with_link_and_marker(rsps: responses.RequestsMock) -> None:
    listed = rsps.get(COMMENTS, json=comments("Looking into it"))
    added = rsps.post(COMMENTS, status=201, json={"id": "20000", "body": "x"})
    c = connector()

    send(c, update(incident_url=INCIDENT_URL))

    (body,) = posted(added)
    assert body["body"].startswith("[ticketpager] Acknowledged in PagerDuty by Jane Doe")
    assert INCIDENT_URL in body["body"] and "tp:Q1ABCDEF:PEV0001:ops-p1" in body["body"]
    assert body["properties"] == [{"key": "sd.public.comment", "value": {"internal": True}}]  # JSM internal
    assert "visibility" not in body
    # the retried step finds its marker and writes nothing
    rsps.replace("GET", COMMENTS, json=comments("Looking into it", body["body"]))
    send(c, update(incident_url=INCIDENT_URL))
    assert added.call_count == 1 and listed.call_count == 1
    assert [c.request.method for c in rsps.calls] == ["GET", "POST", "GET"]


def test_public_comment_and_role_restricted_internal_comment(rsps: responses.RequestsMock) -> None:
    rsps.get(COMMENTS, json=comments())
    added = rsps.post(COMMENTS, status=201, json={"id": "20000", "body": "x"})
    c = connector(internal_comment_role="Developers")

    send(c, update(public=True))
    send(c, update(marker="tp:other"))

    public, internal = posted(added)
    assert "properties" not in public and "visibility" not in public
    assert internal["visibility"] == {"type": "role", "value": "Developers"}
    assert internal["properties"][0]["key"] == "sd.public.comment"


def test_transition_by_category_fills_the_resolution(rsps: responses.RequestsMock) -> None:
    rsps.get(COMMENTS, json=comments())
    rsps.get(ISSUE, json=status("In Progress", "indeterminate"))
    listed = rsps.get(TRANSITIONS, json={"transitions": WORKFLOW})
    moved = rsps.post(TRANSITIONS, status=204)
    added = rsps.post(COMMENTS, status=201, json={"id": "20000", "body": "x"})

    move = Transition(category=StatusCategory.DONE, fields=(("resolution", "Done"),))
    send(connector(), update(transition=move))

    assert "expand=transitions.fields" in listed.calls[0].request.url
    assert posted(moved) == [{"transition": {"id": 31}, "fields": {"resolution": {"name": "Done"}}}]
    assert added.call_count == 1


def test_transition_by_status_name_not_by_transition_name(rsps: responses.RequestsMock) -> None:
    rsps.get(COMMENTS, json=comments())
    rsps.get(ISSUE, json=status("To Do", "new"))
    rsps.get(TRANSITIONS, json={"transitions": WORKFLOW})
    moved = rsps.post(TRANSITIONS, status=204)
    rsps.post(COMMENTS, status=201, json={"id": "20000", "body": "x"})

    send(connector(), update(transition=Transition(status="in progress")))

    assert posted(moved) == [{"transition": {"id": 11}, "fields": {}}]


def test_already_in_the_target_status_moves_nothing(rsps: responses.RequestsMock) -> None:
    rsps.get(COMMENTS, json=comments())
    rsps.get(ISSUE, json=status("Closed", "done"))
    listed = rsps.get(TRANSITIONS, json={"transitions": WORKFLOW})
    added = rsps.post(COMMENTS, status=201, json={"id": "20000", "body": "x"})

    send(connector(), update(transition=Transition(category=StatusCategory.DONE)))

    assert listed.call_count == 0 and added.call_count == 1


def test_no_direct_transition_is_a_clear_permanent_error(rsps: responses.RequestsMock) -> None:
    rsps.get(COMMENTS, json=comments())
    rsps.get(ISSUE, json=status("To Do", "new"))
    rsps.get(TRANSITIONS, json={"transitions": [WORKFLOW[0]]})
    added = rsps.post(COMMENTS, status=201, json={"id": "20000", "body": "x"})

    with pytest.raises(PermanentError) as info:
        send(connector(), update(transition=Transition(category=StatusCategory.DONE)))

    text = str(info.value)
    assert "no direct transition" in text and "status category 'done'" in text
    assert "Start work → In Progress" in text  # what the workflow does offer
    assert added.call_count == 0  # the marker comment is written last: a fixed workflow gets the whole update


def test_empty_transition_list_points_at_the_permission(rsps: responses.RequestsMock) -> None:
    rsps.get(COMMENTS, json=comments())
    rsps.get(ISSUE, json=status("To Do", "new"))
    rsps.get(TRANSITIONS, json={"transitions": []})
    with pytest.raises(PermanentError, match="Transition issues permission"):
        send(connector(), update(transition=Transition(status="Done")))


def test_required_field_without_value_names_it(rsps: responses.RequestsMock) -> None:
    rsps.get(COMMENTS, json=comments())
    rsps.get(ISSUE, json=status("In Progress", "indeterminate"))
    rsps.get(TRANSITIONS, json={"transitions": WORKFLOW})
    moved = rsps.post(TRANSITIONS, status=204)
    with pytest.raises(PermanentError, match="Close issue needs Resolution"):
        send(connector(), update(transition=Transition(category=StatusCategory.DONE)))
    assert moved.call_count == 0


def test_group_into_components_and_unconfigured_field(rsps: responses.RequestsMock) -> None:
    rsps.get(COMMENTS, json=comments())
    read = rsps.get(ISSUE, json=status("To Do", "new"))
    edited = rsps.put(ISSUE, status=204)
    rsps.post(COMMENTS, status=201, json={"id": "20000", "body": "x"})

    send(connector(group_field="components"), update(group="Database"))

    assert "fields=status%2Ccomponents" in read.calls[0].request.url
    assert posted(edited) == [{"fields": {"components": [{"name": "Database"}]}}]
    with pytest.raises(PermanentError, match="TICKETPAGER_JIRA__GROUP_FIELD"):
        send(connector(), update(group="Database", marker="tp:2"))


def test_group_in_a_select_list_custom_field_is_skipped_when_set(rsps: responses.RequestsMock) -> None:
    rsps.get(COMMENTS, json=comments())
    rsps.get(ISSUE, json={"fields": {"status": {"name": "To Do"}, "customfield_10050": {"value": "Database"}}})
    edited = rsps.put(ISSUE, status=204)
    rsps.post(COMMENTS, status=201, json={"id": "20000", "body": "x"})
    send(connector(group_field="customfield_10050"), update(group="Database"))
    assert edited.call_count == 0
    send(connector(group_field="customfield_10050"), update(group="Network", marker="tp:2"))
    assert posted(edited) == [{"fields": {"customfield_10050": {"value": "Network"}}}]


def test_first_update_posts_a_remote_link_by_global_id(rsps: responses.RequestsMock) -> None:
    rsps.get(COMMENTS, json=comments())
    linked = rsps.post(LINKS, status=201, json={"id": 10000, "self": f"{LINKS}/10000"})
    rsps.post(COMMENTS, status=201, json={"id": "20000", "body": "x"})

    first = update(incident_id="Q1ABCDEF", incident_url=INCIDENT_URL, incident_number=812)
    send(connector(), first)
    send(connector(), update(incident_id="Q1ABCDEF", incident_url=INCIDENT_URL, marker="tp:2"))  # not the first

    (body,) = posted(linked)
    assert body["globalId"] == "pagerduty:incident:Q1ABCDEF"  # a repost updates this link (200), never a second
    assert body["object"] == {"url": INCIDENT_URL, "title": "PagerDuty incident #812"}


def test_remote_link_forbidden_is_skipped_and_the_comment_still_written(
    rsps: responses.RequestsMock, caplog: pytest.LogCaptureFixture
) -> None:
    rsps.get(COMMENTS, json=comments())
    rsps.post(LINKS, status=403, json={"errorMessages": ["You do not have permission to link issues"]})
    added = rsps.post(COMMENTS, status=201, json={"id": "20000", "body": "x"})
    send(connector(), update(incident_id="Q1ABCDEF", incident_url=INCIDENT_URL, incident_number=812))
    assert added.call_count == 1
    assert "lacks Link issues" in caplog.text


def test_secrets_never_in_errors_logs_or_repr(rsps: responses.RequestsMock, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    rsps.get(COMMENTS, status=401, json={"errorMessages": [f"bad token {TOKEN}"]})  # a vendor echoing it
    c = connector()
    redact.configure(c.settings)  # as the service does with its settings tree
    with pytest.raises(PermanentError) as info:
        send(c, update())
    dest = NoteDestination("jira", lambda: c)
    for text in (str(info.value), repr(info.value), caplog.text, repr(c), repr(dest), repr(c.settings)):
        assert TOKEN not in text
    assert info.value.__cause__ is None
