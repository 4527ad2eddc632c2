"""The PagerDuty REST destination (``pagerduty_rest``): carries out an :class:`~kernel.model.IncidentUpdate` — a
ticket's new assignment group mapped to an escalation policy (issue 16, item 5) — on the open incident, once.

One send, every step checked before it writes, the marker note last:

1. the incident's notes (``GET /incidents/{id}/notes``): a note carrying ``update.marker`` means it is done;
2. the incident (``GET /incidents/{id}``): reassigned (``PUT /incidents/{id}`` with ``escalation_policy``,
   never ``assignments``: a user assignment stops escalation, ``shared/notes/pagerduty-two-way.md`` §0.3)
   unless it is on that policy already; a resolved incident is neither reassigned nor given responders;
3. responder requests for the other policies (``POST /incidents/{id}/responder_requests``; ``requester_id`` is
   the ``From`` user's id: ``TICKETPAGER_PAGERDUTY__FROM_USER_ID``, or the token's user for a user token);
4. the note (``POST /incidents/{id}/notes``): the rule's text, or what was done, ending with the marker (our
   webhook's echo filter knows it, and the mirror of notes back to the ticket skips it).

A retry after a lost answer to step 3 may ask the responders a second time (PagerDuty offers no look-up of
an incident's responder requests in the operations this uses); every other step is idempotent.
Failures are classified by :data:`connectors.pagerduty_rest.STATUS_TABLE`; the client paces requests.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from connectors.pagerduty_rest import PagerDutyRestClient
from kernel import jsonutil
from kernel.errors import PermanentError, TicketpagerError
from kernel.incidents import Reference
from kernel.model import Action, IncidentUpdate, Outbound, Outcome, Rendered

log = logging.getLogger(__name__)

VENDOR = "PagerDuty REST"
NAME = "pagerduty_rest"
MARKER_LABEL = "ticketpager-marker:"
NOTE_MAX = 25_000  # a note's content is limited (PagerDuty answers 400 past it); ours are short, cut to be safe


def update_to_json(update: IncidentUpdate) -> dict[str, Any]:
    return {
        "incident_id": update.incident_id,
        "dedup_key": update.dedup_key,
        "marker": update.marker,
        "reassign_to_policy": update.reassign_to_policy,
        "responder_policies": list(update.responder_policies),
        "note": update.note,
    }


def update_from_json(data: Mapping[str, Any]) -> IncidentUpdate:
    return IncidentUpdate(
        incident_id=str(data["incident_id"]),
        dedup_key=str(data.get("dedup_key") or ""),
        marker=str(data["marker"]),
        reassign_to_policy=data.get("reassign_to_policy") or None,
        responder_policies=tuple(str(p) for p in data.get("responder_policies") or ()),
        note=data.get("note"),
    )


def note_content(update: IncidentUpdate, done: list[str]) -> str:
    """The rule's note, or what was done; the marker last."""
    text = (update.note or "").strip() or ("ticketpager: " + "; ".join(done) if done else "ticketpager")
    tail = f"\n{MARKER_LABEL} [{update.marker}]"  # `[tp:`: the rules never mirror this note onto the ticket
    return text[: NOTE_MAX - len(tail)] + tail


class PagerDutyUpdateDestination:
    """Incident updates through PagerDuty's REST API. ``client`` builds the REST client on first use (a
    deployment without ``TICKETPAGER_PAGERDUTY__API_TOKEN`` gets a clear ConfigError per send, never at start)."""

    name = NAME
    label = "PagerDuty"
    timeout = None  # several calls per send: the delivery worker renews the claim first
    limiter = None  # the client paces every request to PagerDuty's per-token limit itself

    def __init__(self, client: Callable[[], PagerDutyRestClient], requester_id: str = "") -> None:
        self._factory = client
        self._client: PagerDutyRestClient | None = None
        self._requester_id = requester_id

    def __repr__(self) -> str:
        return f"<PagerDutyUpdateDestination {self.name}>"

    def client(self) -> PagerDutyRestClient:
        if self._client is None:
            self._client = self._factory()
        return self._client

    def render(self, action: Action) -> Rendered:
        if not isinstance(action, IncidentUpdate):
            raise TypeError(f"{self.name} takes incident updates, not {type(action).__name__}")
        if not action.incident_id:
            raise ValueError("an incident update needs the incident id")
        return Rendered(jsonutil.dumps(update_to_json(action)))

    @staticmethod
    def update(body: str) -> IncidentUpdate:
        return update_from_json(jsonutil.loads(body))

    def send(self, item: Outbound, *, timeout: float | None = None) -> Outcome:
        update = self.update(item.body)
        client = self.client()
        if any(update.marker in note.content for note in client.list_notes(update.incident_id)):
            return Outcome(detail="already done (its note is on the incident)")
        incident = client.get_incident(update.incident_id)
        done: list[str] = []
        if incident.status == "resolved":
            if update.reassign_to_policy or update.responder_policies:
                done.append("incident already resolved: not reassigned, no responders asked")
        else:
            policy = update.reassign_to_policy
            if policy and incident.escalation_policy_id != policy:
                client.reassign_to_policy(update.incident_id, policy)
                done.append(f"reassigned to escalation policy {policy}")
            extra = [p for p in dict.fromkeys(update.responder_policies) if p != incident.escalation_policy_id]
            if extra:
                targets = [Reference(p, "escalation_policy_reference") for p in extra]
                message = (update.note or "").strip() or f"ticketpager: help requested ({update.dedup_key})"
                client.add_responders(update.incident_id, self.requester_id(client), message[:500], targets)
                done.append(f"responders requested from {', '.join(extra)}")
        client.add_note(update.incident_id, note_content(update, done))
        return Outcome(status=200, detail="; ".join(done))

    def requester_id(self, client: PagerDutyRestClient) -> str:
        """The user recorded as asking for responders: configured, else the token's own user (user tokens)."""
        if not self._requester_id:
            try:
                self._requester_id = client.current_user().id
            except TicketpagerError as exc:
                if exc.status not in (400, 401, 403):
                    raise
                raise PermanentError(
                    "responder requests need the id of the From user: set TICKETPAGER_PAGERDUTY__FROM_USER_ID "
                    "(an account-level token has no user of its own)",
                    vendor=VENDOR,
                ) from None
        return self._requester_id

    def preview(self, item: Outbound) -> str:
        update = self.update(item.body)
        parts = []
        if update.reassign_to_policy:
            parts.append(f"reassign to escalation policy {update.reassign_to_policy}")
        if update.responder_policies:
            parts.append(f"request responders from {', '.join(update.responder_policies)}")
        if update.note:
            parts.append(f"note: {update.note}")
        return f"update of PagerDuty incident {update.incident_id}: {'; '.join(parts) or 'note'}"
