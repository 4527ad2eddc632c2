"""Per-system adapters of the connector contract suite: the only vendor knowledge the suite needs.

Each adapter says how the vendor signs a webhook body, gives a minimal valid body and an echo of our own
write-back, and starts the vendor's local fake (tests/fakes/) for polling, with a way to make its next
responses fail (429 with ``Retry-After``, 503). Connectors are built through :mod:`connectors.registry`
(settings model and connector class), as the application builds them.

Adding a system to the registry without an adapter here fails ``test_every_registered_system_has_an_adapter``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import requests

from connectors import registry
from connectors.base import Connector
from kernel.clock import FakeClock
from kernel.retry import RetryPolicy
from tests.fakes.jira_server import FakeJira, make_issue
from tests.fakes.servicenow_server import FakeInstance, FakeServiceNowServer, make_record
from tests.fakes.zendesk_server import FakeZendesk
from tests.fakes.zendesk_server import fixture as zendesk_fixture
from tests.fakes.zendesk_server import sign as zendesk_sign

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
#: the instant every webhook body is signed at (the ServiceNow fixture's ``sent_at``)
NOW = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
TICKETS = 5  # tickets in the poll fake: with PAGE_SIZE 2, at least two pages
PAGE_SIZE = 2


def build(name: str, clock: FakeClock, *, insecure: bool = False, retry: RetryPolicy | None = None,
          session: requests.Session | None = None, **values: Any) -> Connector[Any]:
    """A connector of system ``name`` built from the registry: its settings model and its connector class."""
    system = registry.get(name)
    return system.connector_class()(
        system.settings(enabled=True, **values),
        clock=clock,
        session=session or requests.Session(),
        retry=retry or RetryPolicy(),
        insecure=insecure,
    )


class PollFake(Protocol):
    """A running local fake holding :data:`TICKETS` tickets, all changed within the last hour."""

    clock: FakeClock  # near the fake's real time: connectors and fakes agree on "now"
    ids: list[str]  # the tickets' ids (``TicketChange.ticket.id``)

    def connector(self, retry: RetryPolicy | None = None) -> Connector[Any]:
        """A fresh connector (a new process: nothing in memory) pointed at the fake, pages of PAGE_SIZE."""

    def fail_next(self, count: int, status: int, headers: dict[str, str] | None = None) -> None:
        """Answer the next ``count`` API requests with ``status``."""

    def served(self) -> int:
        """How many API requests the fake has answered so far."""


class Adapter(Protocol):
    name: str
    flavours: tuple[str, ...]  # variants of the vendor's API the poll tests run against (Jira: Cloud, Data Center)
    echo_reason: str  # the ignored-reason label (a metric label) of :meth:`echo_body`

    def settings(self, secrets: Sequence[str]) -> dict[str, Any]:
        """Webhook-only settings values with ``secrets`` as the configured webhook secrets (rotation order)."""

    def valid_body(self) -> bytes:
        """A minimal body that becomes at least one change."""

    def echo_body(self) -> bytes:
        """A body that is ticketpager's own write-back coming back to us."""

    def sign(self, body: bytes, secret: str) -> dict[str, str]:
        """The headers the vendor sends with ``body`` signed with ``secret`` at :data:`NOW`."""

    def polling(self, tmp_path: Path, flavour: str) -> AbstractContextManager[PollFake]:
        """Start the local fake (of API ``flavour``) with :data:`TICKETS` tickets."""


# -- Jira ------------------------------------------------------------------------------------------------
@dataclass
class _JiraPoll:
    fake: FakeJira
    clock: FakeClock
    ids: list[str]

    def connector(self, retry: RetryPolicy | None = None) -> Connector[Any]:
        return build("jira", self.clock, retry=retry, url=self.fake.url, email="ticketpager-bot@acme.example",
                     api_token="contract-api-token", jql="project = OPS", page_size=PAGE_SIZE)

    def fail_next(self, count: int, status: int, headers: dict[str, str] | None = None) -> None:
        self.fake.fail_next(count, status, headers)

    def served(self) -> int:
        return len(self.fake.requests)


class JiraAdapter:
    name = "jira"
    echo_reason = "own_comment"
    flavours = ("Cloud", "Server")  # Jira's serverInfo deploymentType: Cloud search/jql, Data Center search
    _updated = (FIXTURES / "jira" / "webhook_issue_updated_done.json").read_bytes()

    def settings(self, secrets: Sequence[str]) -> dict[str, Any]:
        return {"webhook_secrets": list(secrets)}

    def valid_body(self) -> bytes:
        return self._updated

    def echo_body(self) -> bytes:
        data = json.loads(self._updated)
        data.pop("changelog")
        data["issue_event_type_name"] = "issue_commented"
        data["comment"] = {
            "id": "10600",
            "body": "[ticketpager] PagerDuty trigger (rule jira-ops-p1)\nDedup key: tp-1\nticketpager-marker: m-1",
            "author": {"accountId": "5b10ac8d82e05b22cc7d4ef5"},
        }
        return json.dumps(data).encode()

    def sign(self, body: bytes, secret: str) -> dict[str, str]:
        return {
            "x-hub-signature": "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest(),
            "x-atlassian-webhook-identifier": "4f2d6b1e-9d1c-4c77-8e0f-7c1a0d2e3b4a",
            "content-type": "application/json",
        }

    @contextmanager
    def polling(self, tmp_path: Path, flavour: str) -> Iterator[_JiraPoll]:
        now = datetime.now(UTC).replace(microsecond=0)
        with FakeJira(deployment=flavour, time_zone="UTC") as jira:
            ids = [str(10001 + n) for n in range(TICKETS)]
            for n, issue_id in enumerate(ids):
                jira.put(make_issue(issue_id, f"OPS-{n + 1}", updated=now - timedelta(minutes=30 - n),
                                    base_url=jira.url))
            yield _JiraPoll(jira, FakeClock(now), ids)


# -- Zendesk ---------------------------------------------------------------------------------------------
@dataclass
class _ZendeskPoll:
    fake: FakeZendesk
    clock: FakeClock
    ids: list[str]

    def connector(self, retry: RetryPolicy | None = None) -> Connector[Any]:
        return build("zendesk", self.clock, retry=retry, url=self.fake.url, email=self.fake.email,
                     api_token=self.fake.token, page_size=PAGE_SIZE)

    def fail_next(self, count: int, status: int, headers: dict[str, str] | None = None) -> None:
        self.fake.fail_next(count, status, headers)

    def served(self) -> int:
        return len(self.fake.requests)


class ZendeskAdapter:
    name = "zendesk"
    echo_reason = "own_note"
    flavours = ("cloud",)

    def settings(self, secrets: Sequence[str]) -> dict[str, Any]:
        return {"subdomain": "acme", "email": "api@acme.example", "webhook_secrets": list(secrets)}

    def valid_body(self) -> bytes:
        return json.dumps(zendesk_fixture("event_status_changed.json")).encode()

    def echo_body(self) -> bytes:
        return json.dumps(zendesk_fixture("event_comment_added_own_note.json")).encode()

    def sign(self, body: bytes, secret: str) -> dict[str, str]:
        stamp = NOW.strftime("%Y-%m-%dT%H:%M:%SZ")
        return {
            "x-zendesk-webhook-signature": zendesk_sign(secret, stamp, body),
            "x-zendesk-webhook-signature-timestamp": stamp,
            "x-zendesk-webhook-id": "01HW4E0QJ3",
        }

    @contextmanager
    def polling(self, tmp_path: Path, flavour: str) -> Iterator[_ZendeskPoll]:
        with FakeZendesk() as zd:
            ids = [str(tid) for tid in range(1, TICKETS + 1)]
            for tid in range(1, TICKETS + 1):  # older than the newest minute the export withholds
                zd.add_ticket(tid, priority="urgent", status="open", age_seconds=600 - tid)
            yield _ZendeskPoll(zd, FakeClock(datetime.now(UTC)), ids)


# -- ServiceNow ------------------------------------------------------------------------------------------
@dataclass
class _ServiceNowPoll:
    server: FakeServiceNowServer
    clock: FakeClock
    ids: list[str]

    def connector(self, retry: RetryPolicy | None = None) -> Connector[Any]:
        session = requests.Session()
        session.trust_env = False  # REQUESTS_CA_BUNDLE would override the CA below
        session.verify = self.server.ca_pem  # the fake's throwaway CA (pysnc refuses http://)
        fake = self.server.fake
        return build("servicenow", self.clock, retry=retry, session=session, instance_url=self.server.url,
                     username=fake.username, password=fake.password, page_size=PAGE_SIZE)

    def fail_next(self, count: int, status: int, headers: dict[str, str] | None = None) -> None:
        self.server.fake.fail_next(count, status, headers)

    def served(self) -> int:
        return len(self.server.fake.requests)


class ServiceNowAdapter:
    name = "servicenow"
    echo_reason = "own_write_back"
    flavours = ("table-api",)
    _update = (FIXTURES / "servicenow" / "webhook_incident_update.json").read_bytes()
    USERNAME = "ticketpager"

    def settings(self, secrets: Sequence[str]) -> dict[str, Any]:
        return {"instance_url": "https://acme.service-now.com", "username": self.USERNAME,
                "webhook_secrets": list(secrets)}

    def valid_body(self) -> bytes:
        return self._update

    def echo_body(self) -> bytes:
        data = json.loads(self._update)
        data["record"]["sys_updated_by"] = self.USERNAME  # our work note's update, made as the API user
        return json.dumps(data).encode()

    def sign(self, body: bytes, secret: str) -> dict[str, str]:
        signature = base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()
        return {"x-signature": signature, "x-timestamp": str(int(NOW.timestamp())),
                "content-type": "application/json"}

    @contextmanager
    def polling(self, tmp_path: Path, flavour: str) -> Iterator[_ServiceNowPoll]:
        now = datetime.now(UTC).replace(microsecond=0)
        ids = [f"sn-{n:02d}" for n in range(1, TICKETS + 1)]
        fake = FakeInstance([make_record(sys_id, f"INC{n:07d}", now - timedelta(minutes=30 - n))
                             for n, sys_id in enumerate(ids, start=1)])
        with FakeServiceNowServer(fake, str(tmp_path)) as server:
            yield _ServiceNowPoll(server, FakeClock(now), ids)


ADAPTERS: dict[str, Adapter] = {a.name: a for a in (JiraAdapter(), ZendeskAdapter(), ServiceNowAdapter())}
