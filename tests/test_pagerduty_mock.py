"""The local PagerDuty Events API fake keeps connections alive between events, as the vendor's endpoint does
(HTTP/1.1), and a stopped fake answers nothing, on new connections or kept ones."""

from __future__ import annotations

import http.client
import json
import threading
import time
from urllib.parse import urlsplit

import pytest
import requests

from connectors.pagerduty import PagerDutySink
from tests.fakes.pagerduty_server import MockPagerDuty

ROUTING_KEY = "R" * 32


def event(n: int) -> dict[str, object]:
    return {
        "routing_key": ROUTING_KEY,
        "event_action": "trigger",
        "dedup_key": f"tp/jira/{n}/rule",
        "payload": {"summary": f"ticket {n}", "source": "jira", "severity": "critical"},
    }


def test_events_share_one_connection() -> None:
    with MockPagerDuty() as pd:
        url = urlsplit(pd.url)
        conn = http.client.HTTPConnection(url.hostname or "", url.port, timeout=5)
        try:
            for n in range(3):
                body = json.dumps(event(n)).encode()
                conn.request("POST", url.path, body, {"Content-Type": "application/json"})
                response = conn.getresponse()
                assert response.status == 202
                response.read()
                assert response.version == 11 and not response.will_close, "the mock closed the connection"
                if n == 0:
                    sock = conn.sock
                assert conn.sock is sock, "a new connection for the next event"
        finally:
            conn.close()
        assert [e["dedup_key"] for e in pd.events] == [f"tp/jira/{n}/rule" for n in range(3)]


def test_a_stopped_mock_answers_nothing_on_a_kept_connection() -> None:
    """A test that stops PagerDuty gets an outage: the sender's kept connection is not still answered."""
    sink = PagerDutySink("http://127.0.0.1:9/v2/enqueue", timeout=5)
    with sink.session:
        with MockPagerDuty() as pd:
            sink.url = pd.url
            assert sink.send(event(1)).status == 202
        with pytest.raises(requests.ConnectionError):
            sink.session.post(pd.url, json=event(2), timeout=5)
    assert len(pd.events) == 1


def test_a_request_in_flight_when_the_mock_stops_gets_no_answer_and_is_not_recorded() -> None:
    """A slow PagerDuty stopped mid-request: the sender's connection ends without an answer, and the event never
    appears among the accepted ones (a test's assertions after the mock stopped see a settled list)."""
    errors: list[BaseException] = []
    with requests.Session() as session:
        pd = MockPagerDuty()
        with pd:
            pd.latency_seconds = 60.0  # longer than the test: only the stop ends the request's wait
            sender = threading.Thread(target=_post, args=(session, pd.url, errors))
            sender.start()
            deadline = time.monotonic() + 5
            while not pd.open_connections and time.monotonic() < deadline:
                time.sleep(0.01)  # waiting for the request to reach the mock, not for time to pass
            assert pd.open_connections == 1
        sender.join(5)
        assert not sender.is_alive(), "the sender still waits for an answer from a stopped mock"
    assert len(errors) == 1 and isinstance(errors[0], requests.ConnectionError), errors
    assert pd.events == [] and pd.requests == []


def _post(session: requests.Session, url: str, errors: list[BaseException]) -> None:
    try:
        session.post(url, json=event(1), timeout=10)
    except requests.RequestException as exc:
        errors.append(exc)
