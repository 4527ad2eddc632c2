"""The connector contract: what every registered system's connector does alike, tested once for all of them.

Webhooks: a body signed with any configured secret is accepted (rotation); another secret, no signature,
a body changed after signing, or no configured secret (unless insecure) is 401; a replayed delivery is refused
or stored once; our own note echoing back pages nobody; a malformed body is 400, never a crash; secrets never
show in a refusal or a ``repr``. Polling, against the system's local fake: every ticket once across pages, a
restart from the stored cursor reads nothing again, a failed page never moves the cursor past unstored
tickets, and a 429's ``Retry-After`` is waited once on the injected clock. Polling runs against every API
flavour an adapter names (Jira: Cloud and Data Center, which share one paginator). Vendor-specific behaviour
stays in the per-vendor test files.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from connectors import registry
from connectors.base import Connector, PollPage, WebhookResult
from kernel.clock import FakeClock
from kernel.errors import RetryableError, WebhookRejected
from kernel.retry import RetryPolicy
from tests.contract.adapters import ADAPTERS, NOW, TICKETS, Adapter, PollFake, build

OLD_SECRET, NEW_SECRET = "contract-old-rotating-secret", "contract-new-rotating-secret"
SYSTEMS = registry.names()


@pytest.fixture(params=SYSTEMS)
def adapter(request: pytest.FixtureRequest) -> Adapter:
    return ADAPTERS[request.param]


@pytest.fixture(params=[pytest.param((name, flavour), id=f"{name}-{flavour}")
                        for name in SYSTEMS if name in ADAPTERS for flavour in ADAPTERS[name].flavours])
def fake(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[PollFake]:
    """The system's local fake (each API flavour), running, with TICKETS tickets."""
    name, flavour = request.param
    with ADAPTERS[name].polling(tmp_path, flavour) as running:
        yield running


def connector(adapter: Adapter, secrets: list[str] | None = None, *, insecure: bool = False,
              clock: FakeClock | None = None) -> Connector[Any]:
    chosen = [OLD_SECRET, NEW_SECRET] if secrets is None else secrets
    return build(adapter.name, clock or FakeClock(NOW), insecure=insecure, **adapter.settings(chosen))


def receive(conn: Connector[Any], headers: dict[str, str], body: bytes) -> WebhookResult:
    """What the HTTP app does with a request: verify, then parse."""
    conn.verify_webhook(headers, body)
    return conn.parse_webhook(headers, body)


def rejected(conn: Connector[Any], headers: dict[str, str], body: bytes) -> WebhookRejected:
    with pytest.raises(WebhookRejected) as info:
        receive(conn, headers, body)
    return info.value


def test_every_registered_system_has_an_adapter() -> None:
    assert set(SYSTEMS) <= set(ADAPTERS), "add an adapter in tests/contract/adapters.py for the new system"


# -- webhooks: authentication --------------------------------------------------------------------------------
@pytest.mark.parametrize("secret", [OLD_SECRET, NEW_SECRET], ids=["old", "new"])
def test_a_body_signed_with_any_configured_secret_is_accepted(adapter: Adapter, secret: str) -> None:
    body = adapter.valid_body()
    result = receive(connector(adapter), adapter.sign(body, secret), body)
    assert result.ignored_reason is None and len(result.changes) >= 1


def test_a_body_signed_with_another_secret_is_401(adapter: Adapter) -> None:
    body = adapter.valid_body()
    assert rejected(connector(adapter), adapter.sign(body, "some-guessed-secret"), body).status == 401


def test_an_unsigned_request_is_401(adapter: Adapter) -> None:
    assert rejected(connector(adapter), {"content-type": "application/json"}, adapter.valid_body()).status == 401


def test_a_body_changed_after_signing_is_401(adapter: Adapter) -> None:
    body = adapter.valid_body()
    reserialised = json.dumps(json.loads(body), indent=1).encode()  # same JSON, other bytes
    assert reserialised != body
    assert rejected(connector(adapter), adapter.sign(body, NEW_SECRET), reserialised).status == 401


def test_without_a_configured_secret_every_request_is_401_unless_insecure(adapter: Adapter) -> None:
    body = adapter.valid_body()
    refusal = rejected(connector(adapter, []), adapter.sign(body, NEW_SECRET), body)
    assert (refusal.status, refusal.reason) == (401, "webhook secret not configured")
    assert len(receive(connector(adapter, [], insecure=True), {}, body).changes) >= 1


def test_a_replayed_delivery_is_refused_or_stored_once(adapter: Adapter) -> None:
    """An attacker (or a retrying proxy) resends a captured request an hour later: either the signature's
    timestamp refuses it, or it carries the first delivery's id, so the store keeps it once."""
    body = adapter.valid_body()
    headers = adapter.sign(body, NEW_SECRET)
    clock = FakeClock(NOW)
    conn = connector(adapter, clock=clock)
    first = receive(conn, headers, body)
    clock.advance(3600)
    try:
        again = receive(conn, headers, body)
    except WebhookRejected as exc:
        assert exc.status == 401
    else:
        assert [c.delivery_id for c in again.changes] == [c.delivery_id for c in first.changes]


# -- webhooks: content ------------------------------------------------------------------------------------------
def test_our_own_note_echoing_back_is_ignored(adapter: Adapter) -> None:
    body = adapter.echo_body()
    result = receive(connector(adapter), adapter.sign(body, NEW_SECRET), body)
    assert result.changes == [] and result.ignored_reason == adapter.echo_reason


@pytest.mark.parametrize("body", [b"", b"not json", b"\xff\xfe\x00", b"[1, 2]", b"{}", b'{"a": {"b": null}}'],
                         ids=["empty", "text", "binary", "array", "empty-object", "unknown-object"])
def test_a_malformed_body_is_400_never_a_crash(adapter: Adapter, body: bytes) -> None:
    refusal = rejected(connector(adapter, insecure=True, secrets=[]), {}, body)
    assert refusal.status == 400 and refusal.reason


def test_secrets_never_appear_in_a_refusal_or_a_repr(adapter: Adapter) -> None:
    conn = connector(adapter)
    body = adapter.valid_body()
    refusals = [rejected(conn, adapter.sign(body, "some-guessed-secret"), body),
                rejected(conn, {}, body),
                rejected(conn, adapter.sign(body, NEW_SECRET), body + b" ")]
    text = "".join(f"{r}{r!r}{r.reason}" for r in refusals) + repr(conn) + repr(conn.settings)
    assert all(r.reason for r in refusals)
    assert OLD_SECRET not in text and NEW_SECRET not in text


# -- polling, against the system's local fake ------------------------------------------------------------------
def ticket_ids(pages: list[PollPage]) -> list[str]:
    return [change.ticket.id for page in pages for change in page.changes]


def first_cursor(fake: PollFake, conn: Connector[Any]) -> dict[str, Any]:
    return dict(conn.start_cursor(fake.clock.now() - timedelta(hours=1)))


def stored(cursor: Any) -> dict[str, Any]:
    """What the database keeps of a cursor (JSON)."""
    result: dict[str, Any] = json.loads(json.dumps(cursor))
    return result


def test_a_poll_reads_every_ticket_once_across_pages(fake: PollFake) -> None:
    conn = fake.connector()
    pages = list(conn.poll(first_cursor(fake, conn)))
    assert len(pages) >= 2
    assert sorted(ticket_ids(pages)) == sorted(fake.ids)


def test_a_restart_from_the_stored_cursor_reads_nothing_again(fake: PollFake) -> None:
    conn = fake.connector()
    first = list(conn.poll(first_cursor(fake, conn)))
    restarted = fake.connector()  # a new process: only the stored cursor survives
    again = list(restarted.poll(stored(first[-1].cursor)))
    assert sorted(ticket_ids(first)) == sorted(fake.ids)
    assert ticket_ids(again) == []


def test_a_failed_page_never_moves_the_cursor_past_unstored_tickets(fake: PollFake) -> None:
    """The poller stores each page's changes with its cursor; a page that fails stores neither, and the
    next poll from the stored cursor reads every ticket not stored yet."""
    conn = fake.connector(retry=RetryPolicy(max_attempts=1))
    pages = conn.poll(first_cursor(fake, conn))
    page = next(pages)
    kept, cursor = list(ticket_ids([page])), stored(page.cursor)
    assert 0 < len(kept) < TICKETS
    fake.fail_next(5, 503)
    with pytest.raises(RetryableError):
        for page in pages:
            kept += ticket_ids([page])
            cursor = stored(page.cursor)
    resumed = ticket_ids(list(fake.connector().poll(cursor)))
    assert set(kept) | set(resumed) == set(fake.ids)


def test_a_429_retry_after_is_waited_once_on_the_injected_clock(fake: PollFake) -> None:
    """Our retry policy waits exactly what the vendor asked, on the injected clock; the vendor client does not
    retry on its own (one 429 costs exactly one more request than a poll without it)."""
    conn = fake.connector()
    cursor = first_cursor(fake, conn)
    before = fake.served()
    list(conn.poll(cursor))
    unthrottled = fake.served() - before

    throttled = fake.connector()
    fake.fail_next(1, 429, {"Retry-After": "7"})
    before, started = fake.served(), time.monotonic()
    pages = list(throttled.poll(cursor))
    requests = fake.served() - before
    assert time.monotonic() - started < 5  # no real sleeping: the wait went to the fake clock
    assert fake.clock.sleeps.count(7.0) == 1
    assert requests == unthrottled + 1
    assert sorted(ticket_ids(pages)) == sorted(fake.ids)
