"""The ``pagerduty_rest`` destination (issue 16, item 5, REST half) against the local PagerDuty REST fake, which
checks every request and answer against PagerDuty's OpenAPI: reassign to an escalation policy (never to users),
responder requests from the ``From`` user, the marker note written last and once, a resolved incident left
alone, errors classified, the token never shown."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import SecretStr

from connectors.pagerduty_rest import PagerDutyRestClient
from connectors.pagerduty_update import PagerDutyUpdateDestination
from kernel.clock import FakeClock
from kernel.errors import ConfigError, PermanentError, RetryableError
from kernel.model import EventAction, IncidentUpdate, Outbound, TicketNote, TicketRef
from tests.fakes.pagerduty_rest import BOT_EMAIL, TOKEN, FakePagerDutyRest
from tests.test_pagerduty_rest import paged

BOT = "PBOT001"


@pytest.fixture
def pd() -> Iterator[FakePagerDutyRest]:
    with FakePagerDutyRest() as fake:
        yield fake
        assert fake.spec_errors == [], "every request and answer must be valid against PagerDuty's OpenAPI"


def destination(pd: FakePagerDutyRest, requester_id: str = BOT, token: str = TOKEN) -> PagerDutyUpdateDestination:
    def client() -> PagerDutyRestClient:
        return PagerDutyRestClient(SecretStr(token), api_url=pd.url, from_email=BOT_EMAIL, clock=FakeClock())

    return PagerDutyUpdateDestination(client, requester_id=requester_id)


def send(dest: PagerDutyUpdateDestination, update: IncidentUpdate) -> Any:
    """Rendered when queued, sent from the stored body, as the delivery worker does."""
    body = dest.render(update).body
    return dest.send(Outbound(7, "pagerduty_rest", IncidentUpdate.KIND, "reassign", body, "", "OPS-123", 0))


def update(incident_id: str, **extra: Any) -> IncidentUpdate:
    values: dict[str, Any] = {"incident_id": incident_id, "dedup_key": "ticketpager/jira/10001/p1/1", "marker": "tp:m1"}
    values.update(extra)
    return IncidentUpdate(**values)


def writes(pd: FakePagerDutyRest) -> list[tuple[str, str]]:
    return [(r.method, r.path) for r in pd.requests if r.method != "GET"]


def test_reassigns_to_the_policy_and_notes_once(pd: FakePagerDutyRest) -> None:
    incident_id = paged(pd)
    dest = destination(pd)
    action = update(incident_id, reassign_to_policy="PEP0002", note="OPS-123 moved to the DB team (Jira)")

    send(dest, action)
    send(dest, action)  # the retried step: its note is there, nothing is written again

    assert writes(pd) == [("PUT", f"/incidents/{incident_id}"), ("POST", f"/incidents/{incident_id}/notes")]
    put = next(r for r in pd.requests if r.method == "PUT")
    assert put.body == {
        "incident": {
            "type": "incident_reference",
            "escalation_policy": {"id": "PEP0002", "type": "escalation_policy_reference"},
        }
    }
    assert "assignments" not in put.body["incident"]  # a user assignment would stop escalation
    assert put.headers["From"] == BOT_EMAIL
    assert pd.state.incidents[incident_id]["escalation_policy"]["id"] == "PEP0002"
    (note,) = pd.state.notes[incident_id]
    assert note["content"] == "OPS-123 moved to the DB team (Jira)\nticketpager-marker: [tp:m1]"
    types = [d.body for d in pd.outbox]
    assert any(b"incident.delegated" in b for b in types) and any(b"incident.annotated" in b for b in types)


def test_an_incident_already_on_the_policy_is_not_reassigned(pd: FakePagerDutyRest) -> None:
    incident_id = paged(pd)  # on PEP0001, its service's policy
    outcome = send(destination(pd), update(incident_id, reassign_to_policy="PEP0001"))
    assert writes(pd) == [("POST", f"/incidents/{incident_id}/notes")]
    assert outcome.detail == ""


def test_responders_are_requested_by_the_from_user(pd: FakePagerDutyRest) -> None:
    incident_id = paged(pd)
    send(destination(pd), update(incident_id, responder_policies=("PEP0002", "PEP0001"), note="DBA help please"))
    request = next(r for r in pd.requests if r.path.endswith("/responder_requests"))
    assert request.body == {
        "requester_id": BOT,
        "message": "DBA help please",
        # the incident's own policy (PEP0001) is already responding: only the other one is asked
        "responder_request_targets": [
            {"responder_request_target": {"id": "PEP0002", "type": "escalation_policy_reference"}}
        ],
    }
    assert any(b"incident.responder.added" in d.body for d in pd.outbox)
    (note,) = pd.state.notes[incident_id]
    assert note["content"].endswith("ticketpager-marker: [tp:m1]")


def test_without_a_requester_id_an_account_token_gets_a_clear_error(pd: FakePagerDutyRest) -> None:
    incident_id = paged(pd)
    with pytest.raises(PermanentError, match="TICKETPAGER_PAGERDUTY__FROM_USER_ID"):
        send(destination(pd, requester_id=""), update(incident_id, responder_policies=("PEP0002",)))
    assert pd.state.notes[incident_id] == []  # the marker note is last: the fixed retry does the whole update
    pd.spec_errors.clear()  # GET /users/me with an account key: refused, as PagerDuty does


def test_a_user_token_requests_responders_as_its_user() -> None:
    with FakePagerDutyRest(token_users={"user-token-abcdef": "PUSER02"}) as pd:
        incident_id = paged(pd)
        send(
            destination(pd, requester_id="", token="user-token-abcdef"),
            update(incident_id, responder_policies=("PEP0002",)),
        )
        request = next(r for r in pd.requests if r.path.endswith("/responder_requests"))
        assert request.body["requester_id"] == "PUSER02"
        assert pd.spec_errors == []


def test_a_resolved_incident_gets_the_note_only(pd: FakePagerDutyRest) -> None:
    incident_id = paged(pd)
    pd.resolve(incident_id)
    outcome = send(destination(pd), update(incident_id, reassign_to_policy="PEP0002", responder_policies=("PEP0002",)))
    assert writes(pd) == [("POST", f"/incidents/{incident_id}/notes")]
    assert "already resolved" in outcome.detail
    assert "already resolved" in pd.state.notes[incident_id][0]["content"]


def test_unknown_policy_is_permanent_and_a_5xx_retryable(pd: FakePagerDutyRest) -> None:
    incident_id = paged(pd)
    with pytest.raises(PermanentError, match="1014"):
        send(destination(pd), update(incident_id, reassign_to_policy="PNOPE99"))
    pd.fail_next(1, 503)
    with pytest.raises(RetryableError):
        send(destination(pd), update(incident_id, reassign_to_policy="PEP0002"))


def test_only_incident_updates_render() -> None:
    dest = PagerDutyUpdateDestination(lambda: pytest.fail("no client while rendering"))
    note = TicketNote(TicketRef("jira", "1", "OPS-1"), EventAction.TRIGGER, "dk", "r", "tp:n", "text")
    with pytest.raises(TypeError):
        dest.render(note)
    rendered = dest.render(IncidentUpdate("Q1", "dk", "tp:m", reassign_to_policy="PEP0002"))
    item = Outbound(1, "pagerduty_rest", IncidentUpdate.KIND, "reassign", rendered.body, "", "OPS-1", 0)
    assert dest.preview(item) == "update of PagerDuty incident Q1: reassign to escalation policy PEP0002"


def test_the_token_never_shows(pd: FakePagerDutyRest, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    pd.fail_next(1, 401, body={"error": {"message": f"Unauthorized {TOKEN}", "code": 2006}})
    dest = destination(pd)
    with pytest.raises(PermanentError) as info:
        send(dest, update("Q1ABCDEF"))
    for text in (str(info.value), repr(info.value), caplog.text, repr(dest), repr(dest.client())):
        assert TOKEN not in text


def test_without_a_rest_token_a_send_is_a_clear_configuration_error() -> None:
    dest = PagerDutyUpdateDestination(lambda: PagerDutyRestClient(SecretStr("")))
    rendered = dest.render(IncidentUpdate("Q1", "dk", "tp:m", reassign_to_policy="PEP0002"))  # rendering needs none
    with pytest.raises(ConfigError, match="TICKETPAGER_PAGERDUTY__API_TOKEN"):
        dest.send(Outbound(1, "pagerduty_rest", IncidentUpdate.KIND, "reassign", rendered.body, "", "OPS-1", 0))
