"""Fakedesk: a small fake fourth ticketing system, written the way a third-party package would add one.

Everything ticketpager needs is here (settings model, the attributes rules may read, a webhook verifier and
parser, a poller and a note writer against Fakedesk's tiny JSON API); it is registered with one line, an
entry point in the ``ticketpager.systems`` group naming :data:`SYSTEM` (see tests/test_fake_system.py),
and no file of ticketpager is edited for it.

Fakedesk's API (served by ``responses`` in the tests): ``GET {url}/api/tickets?since=ISO`` answers
``{"tickets": [ticket, …]}``; ``POST {url}/api/tickets/{id}/notes``; ``GET {url}/api/me``. A webhook body is
``{"ticket": ticket}`` signed with ``X-Fakedesk-Signature: <hex HMAC-SHA256 of the body>``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import Any

from pydantic import SecretStr

from connectors.base import Connector, Headers, PollPage, WebhookResult, WriteBack
from connectors.registry import System
from connectors.settings import ConnectorSettings
from connectors.signing import hex_signatures, matches_any
from kernel.errors import PermanentError, WebhookRejected
from kernel.model import Origin, StatusCategory, Ticket, TicketChange

NAME = "fakedesk"
SIGNATURE_HEADER = "x-fakedesk-signature"
CATEGORIES = {"open": StatusCategory.NEW, "working": StatusCategory.IN_PROGRESS, "closed": StatusCategory.DONE}
ATTRIBUTES = frozenset({"queue", "severity_code"})  # what rules with source: fakedesk may read besides the ticket's


class FakedeskSettings(ConnectorSettings):
    url: str = ""  # the Fakedesk API's base URL, e.g. https://acme.fakedesk.example
    api_token: SecretStr = SecretStr("")  # Fakedesk API token (bearer)


class FakedeskConnector(Connector[FakedeskSettings]):
    name = NAME

    def verify_webhook(self, headers: Headers, body: bytes) -> None:
        secrets = self.settings.webhook_secrets
        if not self.settings.webhook_configured:
            if self.insecure:
                return
            raise WebhookRejected(401, "no webhook secret configured (TICKETPAGER_FAKEDESK__WEBHOOK_SECRETS)")
        given = headers.get(SIGNATURE_HEADER)
        if not given:
            raise WebhookRejected(401, "missing X-Fakedesk-Signature header")
        if not matches_any(given, hex_signatures(secrets, body)):
            raise WebhookRejected(401, "bad signature")

    def parse_webhook(self, headers: Headers, body: bytes) -> WebhookResult:
        try:
            data = json.loads(body)
            change = self._change(data["ticket"], Origin.WEBHOOK, headers.get("x-fakedesk-delivery"))
        except (ValueError, KeyError, TypeError) as exc:
            raise WebhookRejected(400, f"not a Fakedesk ticket: {type(exc).__name__}") from None
        return WebhookResult([change])

    def _change(self, raw: Mapping[str, Any], origin: Origin, delivery: str | None) -> TicketChange:
        updated = datetime.fromisoformat(raw["updated"])
        ticket = Ticket(
            source=NAME,
            id=str(raw["id"]),
            key=f"FD-{raw['id']}",
            title=str(raw["title"]),
            status=str(raw["status"]),
            status_category=CATEGORIES[raw["status"]],
            updated=updated,
            url=f"{self.settings.url}/tickets/{raw['id']}",
            priority=raw.get("priority"),
            attributes={name: raw.get(name) for name in ATTRIBUTES},
            raw=raw,
        )
        return TicketChange(
            ticket=ticket,
            origin=origin,
            delivery_id=delivery or f"poll:{ticket.id}:{updated.isoformat()}",
            received_at=self.clock.now(),
        )

    def start_cursor(self, since: datetime) -> Mapping[str, Any]:
        return {"since": since.isoformat()}

    def poll(self, cursor: Mapping[str, Any] | None) -> Iterator[PollPage]:
        since = (cursor or self.start_cursor(self.clock.now()))["since"]
        response = self.session.get(
            f"{self.settings.url}/api/tickets", params={"since": since}, headers=self._auth(), timeout=5
        )
        response.raise_for_status()
        changes = [self._change(raw, Origin.POLL, None) for raw in response.json()["tickets"]]
        newest = max((c.ticket.updated.isoformat() for c in changes), default=since)
        yield PollPage(changes, {"since": newest})

    def write_back(self, note: WriteBack) -> None:
        self.session.post(
            f"{self.settings.url}/api/tickets/{note.ticket.id}/notes",
            json={"marker": note.marker, "text": note.text},
            headers=self._auth(),
            timeout=5,
        ).raise_for_status()

    def check(self) -> None:
        if self.session.get(f"{self.settings.url}/api/me", headers=self._auth(), timeout=5).status_code != 200:
            raise PermanentError("Fakedesk refused the API token")

    @property
    def can_poll(self) -> bool:
        return bool(self.settings.url and self.settings.api_token.get_secret_value())

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.settings.api_token.get_secret_value()}"}


SYSTEM = System(NAME, FakedeskSettings, ATTRIBUTES, "tests.fake_system:FakedeskConnector")
