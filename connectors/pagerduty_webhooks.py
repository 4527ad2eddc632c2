"""PagerDuty webhooks v3, inbound: verify ``X-PagerDuty-Signature`` and parse one event into typed data.

Pure functions, no I/O: :func:`verify_signature` (HMAC-SHA256 of the raw body, several ``v1=`` signatures
during a secret rotation and several configured secrets, any match accepts, constant time) and
:func:`parse_event` (the ``{"event": {...}}`` envelope into a frozen :class:`IncidentEvent`, or an
:class:`IgnoredEvent` for the types the two-way sync does not act on). Refusals are
:class:`~kernel.errors.WebhookRejected` with the status to answer and a reason safe to send back.

Echoes: our own Events-API acknowledge/resolve comes back with an ``inbound_integration_reference`` agent,
our own REST writes with the ``From`` user as agent (``notes/pagerduty-two-way.md`` §1.3);
:meth:`IncidentEvent.is_echo` tells them from a person's action.

Payload shape: https://developer.pagerduty.com/docs/webhooks/v3-overview/ (no JSON Schema is published).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from pydantic import SecretStr

from connectors.base import webhook_json
from connectors.signing import hex_signatures, matches_any
from kernel import jsonutil
from kernel.errors import WebhookRejected
from kernel.incidents import (
    INTEGRATION_AGENT,
    Agent,
    EventType,
    IgnoredEvent,
    Incident,
    IncidentEvent,
    Note,
    ParsedEvent,
    Reference,
    Responder,
)

__all__ = [
    "INTEGRATION_AGENT",
    "Agent",
    "EventType",
    "IgnoredEvent",
    "Incident",
    "IncidentEvent",
    "Note",
    "ParsedEvent",
    "Reference",
    "Responder",
    "incident_event_body",
    "parse_event",
    "verify_signature",
    "webhook_id",
]

DOC_OVERVIEW = "https://developer.pagerduty.com/docs/webhooks/v3-overview/"
DOC_SIGNATURES = "https://developer.pagerduty.com/docs/webhooks/webhook-signatures/"
DOC_BEHAVIOR = "https://developer.pagerduty.com/docs/webhooks/webhook-behavior/"

#: ``v1=<hex>[,v1=<hex>…]``: one signature per active secret while one is rotated (DOC_SIGNATURES)
SIGNATURE_HEADER = "x-pagerduty-signature"
SIGNATURE_SCHEME = "v1"
#: unique per webhook and unchanged across retries: the dedupe key (DOC_BEHAVIOR)
WEBHOOK_ID_HEADER = "x-webhook-id"
SUBSCRIPTION_HEADER = "x-webhook-subscription"
#: "Payloads over 256 KB are always dropped" by PagerDuty (DOC_BEHAVIOR): anything bigger is not from it
MAX_BODY_BYTES = 256 * 1024
#: at most this many signatures are checked in one header (rotation needs two; hostile input is bounded)
MAX_SIGNATURES = 8


#: ``data.type`` for each handled event type (DOC_OVERVIEW event table)
_DATA_TYPES: Mapping[EventType, str] = {
    **{t: "incident" for t in EventType},
    EventType.ANNOTATED: "incident_note",
    EventType.RESPONDER_ADDED: "incident_responder",
}


def _header(headers: Mapping[str, str], name: str) -> str:
    for key, value in headers.items():
        if key.lower() == name:
            return value
    return ""


def signatures(header: str) -> list[str]:
    """The hex digests of the ``v1=`` entries of an ``X-PagerDuty-Signature`` value (others are skipped)."""
    found = []
    for part in header.split(",")[: MAX_SIGNATURES * 2]:
        scheme, sep, value = part.strip().partition("=")
        if sep and scheme.strip().lower() == SIGNATURE_SCHEME and value.strip():
            found.append(value.strip().lower())
    return found[:MAX_SIGNATURES]


def verify_signature(headers: Mapping[str, str], body: bytes, secrets: Sequence[SecretStr]) -> None:
    """Accept ``body`` when any ``v1=`` signature matches the HMAC-SHA256 of it under any of ``secrets``;
    :class:`WebhookRejected` 401 otherwise (no secret configured, no header, no match)."""
    expected = hex_signatures(secrets, body)
    if not expected:
        raise WebhookRejected(401, "PagerDuty webhook secret not configured")
    header = _header(headers, SIGNATURE_HEADER)
    if not header:
        raise WebhookRejected(401, "missing X-PagerDuty-Signature header")
    given = signatures(header)
    if not given:
        raise WebhookRejected(401, "X-PagerDuty-Signature must be v1=<hex HMAC-SHA256 of the body>")
    ok = False
    for signature in given:  # every candidate is compared: no early exit tells which one matched
        ok |= matches_any(signature, expected)
    if not ok:
        raise WebhookRejected(401, "invalid X-PagerDuty-Signature")


def dedupe_key(event_id: str) -> str:
    """The inbox's dedupe key of a verified webhook: its signed ``event.id`` (one per event, the same on every
    retry and in every subscription that delivers it), not ``X-Webhook-Id``, which the signature does not cover:
    a captured body replayed under fresh ids would be stored and handled again. Hashed past the column's 255."""
    key = "event:" + event_id
    return key if len(key) <= 255 else "event-sha256:" + hashlib.sha256(event_id.encode()).hexdigest()


def webhook_id(headers: Mapping[str, str]) -> str:
    """``X-Webhook-Id``: the same on every retry of one delivery, so the dedupe key; 400 when absent."""
    value = _header(headers, WEBHOOK_ID_HEADER).strip()
    if not value:
        raise WebhookRejected(400, "missing X-Webhook-Id header")
    if len(value) > 255:
        raise WebhookRejected(400, "X-Webhook-Id longer than 255 characters")
    return value


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise WebhookRejected(400, f"{where} must be a JSON object")
    return value


def _text(value: Any, where: str, *, required: bool = True) -> str:
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value):
        raise WebhookRejected(400, f"{where} must be a non-empty string")
    return value


def _reference(value: Any, where: str) -> Reference | None:
    if value is None:
        return None
    data = _object(value, where)
    return Reference(
        id=_text(data.get("id"), f"{where}.id"),
        type=_text(data.get("type"), f"{where}.type"),
        summary=_text(data.get("summary"), f"{where}.summary", required=False),
    )


def _ref_id(value: Any, where: str) -> str | None:
    ref = _reference(value, where)
    return ref.id if ref else None


def _agent(value: Any) -> Agent | None:
    ref = _reference(value, "event.agent")
    return Agent(ref.id, ref.type, ref.summary) if ref else None


def _occurred_at(value: Any) -> datetime:
    text = _text(value, "event.occurred_at")
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise WebhookRejected(400, "event.occurred_at is not an ISO 8601 time") from None
    if when.tzinfo is None:
        raise WebhookRejected(400, "event.occurred_at has no time zone")
    return when


def _incident(data: dict[str, Any]) -> Incident:
    number = data.get("number")
    if number is not None and (not isinstance(number, int) or isinstance(number, bool)):
        raise WebhookRejected(400, "event.data.number must be an integer")
    assignees = data.get("assignees")
    if assignees is None:
        assignees = []
    if not isinstance(assignees, list):
        raise WebhookRejected(400, "event.data.assignees must be a list")
    refs = tuple(
        ref for i, item in enumerate(assignees) if (ref := _reference(item, f"event.data.assignees[{i}]")) is not None
    )
    priority = data.get("priority")
    priority_ref = _reference(priority, "event.data.priority")
    key = data.get("incident_key")
    return Incident(
        id=_text(data.get("id"), "event.data.id"),
        number=number,
        html_url=_text(data.get("html_url"), "event.data.html_url", required=False),
        status=_text(data.get("status"), "event.data.status"),
        title=_text(data.get("title"), "event.data.title", required=False),
        service_id=_ref_id(data.get("service"), "event.data.service"),
        escalation_policy_id=_ref_id(data.get("escalation_policy"), "event.data.escalation_policy"),
        priority=priority_ref.summary if priority_ref else None,
        assignees=refs,
        incident_key=key if isinstance(key, str) and key else None,
    )


def parse_event(body: bytes) -> ParsedEvent:
    """One v3 webhook body as typed data. :class:`WebhookRejected` 413 over :data:`MAX_BODY_BYTES`, 400 for
    a body that is not a v3 event or lacks what a handled type needs (the reason names the field)."""
    if len(body) > MAX_BODY_BYTES:
        raise WebhookRejected(413, f"body larger than {MAX_BODY_BYTES // 1024} KB (PagerDuty drops those)")
    payload = webhook_json(body)
    event = _object(_object(payload, "body").get("event"), "event")
    event_id = _text(event.get("id"), "event.id")
    raw_type = _text(event.get("event_type"), "event.event_type")
    try:
        event_type = EventType(raw_type)
    except ValueError:
        return IgnoredEvent(event_id, raw_type[:200])
    data = _object(event.get("data"), "event.data")
    data_type = _text(data.get("type"), "event.data.type")
    wanted = _DATA_TYPES[event_type]
    if data_type != wanted:
        raise WebhookRejected(400, f"event.data.type is {data_type[:100]!r}; {event_type} carries {wanted!r}")
    occurred_at, agent = _occurred_at(event.get("occurred_at")), _agent(event.get("agent"))
    if data_type == "incident":
        incident = _incident(data)
        return IncidentEvent(event_id, event_type, occurred_at, incident.id, incident.title, agent, incident=incident)
    ref = _reference(data.get("incident"), "event.data.incident")
    if ref is None:
        raise WebhookRejected(400, "event.data.incident must be a JSON object")
    if data_type == "incident_note":
        note = Note(
            id=_text(data.get("id"), "event.data.id", required=False),
            content=_text(data.get("content"), "event.data.content", required=False),
            trimmed=data.get("trimmed") is True,
        )
        return IncidentEvent(event_id, event_type, occurred_at, ref.id, ref.summary, agent, note=note)
    responder = Responder(
        state=_text(data.get("state"), "event.data.state", required=False),
        message=_text(data.get("message"), "event.data.message", required=False),
        user=_reference(data.get("user"), "event.data.user"),
        escalation_policy=_reference(data.get("escalation_policy"), "event.data.escalation_policy"),
    )
    return IncidentEvent(event_id, event_type, occurred_at, ref.id, ref.summary, agent, responder=responder)


def incident_event_body(event: IncidentEvent) -> bytes:
    """The v3 webhook body of an ``incident``-typed ``event``: what :func:`parse_event` reads back as the same
    event. The incident check (:mod:`sync.reconcile`) stores the news PagerDuty's REST API gave this way, so the
    reverse worker handles it like any webhook."""
    inc = event.incident
    if inc is None:
        raise ValueError("only incident-typed events have a body of their own here")

    def ref(kind: str, ref_id: str | None) -> dict[str, str]:
        return {"id": ref_id, "type": f"{kind}_reference"} if ref_id else {}

    agent = event.agent
    data = {
        "id": inc.id,
        "type": "incident",
        "html_url": inc.html_url,
        "number": inc.number,
        "status": inc.status,
        "incident_key": inc.incident_key,
        "title": inc.title,
        "service": ref("service", inc.service_id) or None,
        "escalation_policy": ref("escalation_policy", inc.escalation_policy_id) or None,
        "assignees": [{"id": a.id, "type": a.type, "summary": a.summary} for a in inc.assignees],
        # only the priority's name is kept (Incident.priority); it stands in for the id, which nothing reads
        "priority": ref("priority", inc.priority) | {"summary": inc.priority} if inc.priority else None,
    }
    body = {
        "event": {
            "id": event.event_id,
            "event_type": event.event_type.value,
            "resource_type": "incident",
            "occurred_at": event.occurred_at.isoformat(),
            "agent": {"id": agent.id, "type": agent.type, "summary": agent.summary} if agent else None,
            "client": None,
            "data": data,
        }
    }
    return jsonutil.dumps(body).encode()
