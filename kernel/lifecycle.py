"""The incident lifecycle: from rule verdicts and current link states to the events to send. Pure.

Per rule, given what the rules engine said and what we last told the incident destination:

=====================  ==========================================  =======================================
link state             verdict                                     events
=====================  ==========================================  =======================================
none / resolved        matched, resolve_when false, not deleted    trigger (new generation → new dedup key);
                                                                   + acknowledge if acknowledge_when holds
open                   resolve_when holds, or ticket deleted       resolve
open                   not matched and ``on_unmatch: resolve``     resolve
triggered              acknowledge_when holds                      acknowledge
acknowledged           acknowledge_when holds                      nothing (already acknowledged)
open, rule removed     ticket done or deleted                      resolve (an incident never stays orphaned)
resolved in PagerDuty  matched, ticket unchanged since (the hold)  nothing (see :func:`content_digest`)
anything else                                                      nothing
=====================  ==========================================  =======================================

Acknowledge and resolve always go to the routing key of the trigger (the incident is known under it only).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import replace

from kernel import jsonutil
from kernel.model import EventAction, IncidentState, LinkState, PlannedEvent, StatusCategory, Ticket
from kernel.ports import Verdict

#: the ``dedup_key`` columns of the outbox and links (sync/schema.py); a destination fits its own limit
DEDUP_KEY_MAX = 255


def dedup_key_for(source: str, ticket_id: str, rule: str, generation: int, connection: str | None = None) -> str:
    """Stable per (ticket, rule, incident generation): duplicates of a change can never page twice,
    while a reopened ticket (next generation) opens a new incident. Hashed when over :data:`DEDUP_KEY_MAX`.

    A ticket of a named connection has its connection in the key (``ticketpager/<system>/<connection>/<id>/…``:
    the same id on two instances is two incidents); a default connection's key (``connection`` ``None`` or the
    system's name) is the one every earlier version wrote, so open incidents keep theirs."""
    prefix = f"ticketpager/{source}" if connection in (None, "", source) else f"ticketpager/{source}/{connection}"
    key = f"{prefix}/{ticket_id}/{rule}/{generation}"
    if len(key) <= DEDUP_KEY_MAX:
        return key
    digest = hashlib.sha256(key.encode()).hexdigest()
    return f"{prefix}/sha256:{digest}"


def content_digest(ticket: Ticket) -> str:
    """What the rules can see of ``ticket``, without ``updated`` (and ``raw``): equal digests mean the ticket did
    not change in any way a rule could notice — a comment or note, ours included, only moves ``updated``.

    The hold rule: when a person resolves our incident in PagerDuty while the ticket still matches, the link
    records this digest (``links.hold_version``) and no new incident is opened for that rule while the
    ticket's digest is the same; any other change to the ticket ends the hold."""
    body = ticket.to_json()
    body.pop("raw", None)
    body.pop("updated", None)
    return hashlib.sha256(jsonutil.dumps(body, sort_keys=True).encode()).hexdigest()[:32]


def plan(results: Sequence[Verdict], links: Mapping[str, LinkState], ticket: Ticket) -> list[PlannedEvent]:
    """The events this ticket version calls for, in the order they must be sent."""
    events: list[PlannedEvent] = []
    gone = ticket.status_category is StatusCategory.DELETED
    done = gone or ticket.status_category is StatusCategory.DONE
    for result in results:
        link = links.get(result.rule) if links else None
        if link is None and not result.matched:
            continue  # most of a change's verdicts (issue 19): a rule that did not match, and no incident of it
        if link is not None and link.state.is_open:
            if gone or result.resolve:
                why = "ticket deleted" if gone else "resolve_when holds"
                events.append(_follow_up(link, EventAction.RESOLVE, why))
            elif not result.matched and result.on_unmatch == "resolve":
                events.append(_follow_up(link, EventAction.RESOLVE, "no longer matches (on_unmatch: resolve)"))
            elif result.acknowledge and link.state is IncidentState.TRIGGERED:
                events.append(_follow_up(link, EventAction.ACKNOWLEDGE, "acknowledge_when holds"))
            continue
        if result.matched and not result.resolve and not gone and result.trigger is not None:
            if link is not None and link.hold_version is not None and link.hold_version == content_digest(ticket):
                continue  # a person resolved it in PagerDuty and the ticket has not changed since: no new page
            generation = (link.generation + 1) if link is not None else 1
            dedup_key = dedup_key_for(ticket.source, ticket.id, result.rule, generation, ticket.connection)
            why = "matched" if link is None else f"matched again after resolve (incident #{generation})"
            trigger = PlannedEvent(
                rule=result.rule,
                action=EventAction.TRIGGER,
                dedup_key=dedup_key,
                routing_key=result.trigger.routing_key,
                generation=generation,
                reason=why,
                trigger=result.trigger,
            )
            events.append(trigger)
            if result.acknowledge:  # the same incident, acknowledged right after it opens
                ack_reason = "acknowledge_when already holds"
                events.append(replace(trigger, action=EventAction.ACKNOWLEDGE, reason=ack_reason, trigger=None))
    if done and links:
        seen = {result.rule for result in results}
        for rule, link in links.items():
            if rule not in seen and link.state.is_open:
                events.append(_follow_up(link, EventAction.RESOLVE, "rule no longer configured; ticket is done"))
    return events


def _follow_up(link: LinkState, action: EventAction, reason: str) -> PlannedEvent:
    return PlannedEvent(
        rule=link.rule,
        action=action,
        dedup_key=link.dedup_key,
        routing_key=link.routing_key,
        generation=link.generation,
        reason=reason,
    )


def next_state(action: EventAction) -> IncidentState:
    return {
        EventAction.TRIGGER: IncidentState.TRIGGERED,
        EventAction.ACKNOWLEDGE: IncidentState.ACKNOWLEDGED,
        EventAction.RESOLVE: IncidentState.RESOLVED,
    }[action]
