"""Smaller edge faults (issue 13, item 11), through real sockets against ``ticketpager serve``: an over-limit
body written whole before reading, a malformed Content-Length, a lower-case bearer scheme, long delivery ids
sharing a prefix."""

from __future__ import annotations

import json

import pytest

from tests.serve_proc import Serve
from tests.test_app import jira_body, sign
from tests.test_edge_limits import BODY_LIMIT, METRICS_TOKEN, connect, get, read_response, serve

__all__ = ["serve"]  # the module-scoped serve fixture, shared with tests/test_edge_limits.py


def test_a_body_over_the_limit_written_whole_gets_the_413(serve: Serve) -> None:
    """urllib (like many vendors' senders) writes the whole body before reading: it must see the 413."""
    for size in (3 * 1024 * 1024, 5 * 1024 * 1024):
        status, answer = serve.post("/webhooks/jira", b"x" * size, {})
        assert status == 413
        assert json.loads(answer) == {"error": f"body larger than {BODY_LIMIT} bytes"}


def test_a_chunked_body_over_the_limit_gets_the_413_after_it_is_sent(serve: Serve) -> None:
    with connect(serve) as sock:
        sock.sendall(b"POST /webhooks/jira HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(40):  # 2.6 MB in 64 KiB chunks
            sock.sendall(b"10000\r\n" + b"x" * 65536 + b"\r\n")
        sock.sendall(b"0\r\n\r\n")
        status, headers, body = read_response(sock)
    assert status == 413 and headers["connection"] == "close"
    assert json.loads(body)["error"] == f"body larger than {BODY_LIMIT} bytes"


@pytest.mark.parametrize("value", ["abc", "-1", "1, 2", "99999999999999999999999"])
def test_a_malformed_content_length_gets_a_json_400(serve: Serve, value: str) -> None:
    with connect(serve) as sock:
        sock.sendall(f"POST /webhooks/jira HTTP/1.1\r\nHost: x\r\nContent-Length: {value}\r\n\r\n{{}}".encode())
        status, headers, body = read_response(sock)
    assert status == 400
    assert headers["content-type"] == "application/json"
    assert json.loads(body)["error"].startswith("invalid HTTP request: ")


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
def test_the_bearer_scheme_is_case_insensitive(serve: Serve, scheme: str) -> None:
    status, answer = get(serve, "/admin/status", f"{scheme} {METRICS_TOKEN}")
    assert status == 200, answer


def test_a_wrong_bearer_token_is_still_refused(serve: Serve) -> None:
    assert get(serve, "/admin/status", "bearer nope")[0] == 401
    assert get(serve, "/admin/status", f"Basic {METRICS_TOKEN}")[0] == 401


def test_a_signed_body_replayed_under_fresh_identifiers_is_one_delivery(serve: Serve) -> None:
    """Jira's X-Atlassian-Webhook-Identifier is not signed: a captured body sent again under new identifiers (long
    ones too) is a duplicate of the first, not a new change stored and processed again. (Long ids of the sources
    that have them are hashed, not cut, at the store: the next test.)"""
    body = jira_body(issue_id="20002")
    prefix = "d" * 300

    def deliver(identifier: str) -> dict[str, object]:
        status, answer = serve.post(
            "/webhooks/jira", body, {"X-Hub-Signature": sign(body), "X-Atlassian-Webhook-Identifier": identifier}
        )
        assert status == 202, answer
        return dict(json.loads(answer))

    assert deliver(prefix + "-first")["stored"] == 1
    assert deliver(prefix + "-second") == {"status": "accepted", "stored": 0, "duplicates": 1}
    assert deliver("another-id") == {"status": "accepted", "stored": 0, "duplicates": 1}


def test_long_delivery_ids_are_hashed_not_cut_in_both_stores(db_url: str) -> None:
    """The same at the store, on SQLite and PostgreSQL: ids over the column's 255 characters that share a
    prefix stay distinct, and an exact repeat is still a duplicate."""
    from sync.repos.changes import insert_changes
    from sync.store import Store
    from tests.factories import change, ticket

    store = Store(db_url)
    try:
        store.upgrade()
        prefix = "jira:" + "p" * 400
        first = change(ticket("31001"), prefix + "a")
        second = change(ticket("31001"), prefix + "b")
        with store.begin() as conn:
            assert insert_changes(conn, [first, second]) == 2
        with store.begin() as conn:
            assert insert_changes(conn, [change(ticket("31001"), prefix + "b")]) == 0
    finally:
        store.dispose()
