"""Header *fields* and chunked framing at the edge (review of issue 13), through real sockets against
``ticketpager serve``: thousands of one-byte headers fit in the 64 KiB header block but cost ~30× their wire
size once parsed (a tuple of two ``bytes`` each, held for the body deadline); trailers after a chunked body
were not counted at all, so one connection streaming them grew the process by hundreds of MiB and starved
everything else.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from tests.serve_proc import Serve
from tests.test_app import jira_body, sign
from tests.test_edge_limits import connect, read_response, rss_bytes, serve, serve_env

__all__ = ["serve"]  # the module-scoped serve fixture, shared with tests/test_edge_limits.py

MAX_FIELDS = 100  # the default TICKETPAGER_HTTP__MAX_HEADER_FIELDS


def test_more_header_fields_than_the_limit_get_431(serve: Serve) -> None:
    with connect(serve) as sock:
        sock.sendall(b"POST /webhooks/jira HTTP/1.1\r\nHost: x\r\n" + b"a:\r\n" * 16000 + b"Content-Length: 2\r\n\r\n")
        status, headers, body = read_response(sock)
    assert status == 431
    assert headers["connection"] == "close"
    assert json.loads(body) == {"error": f"more than {MAX_FIELDS} request header fields"}


def test_a_request_with_the_limit_of_header_fields_is_served(serve: Serve) -> None:
    body = jira_body(issue_id="20101")
    fixed = ["Host: x", "Content-Type: application/json", f"X-Hub-Signature: {sign(body)}",
             "X-Atlassian-Webhook-Identifier: edge-fields-100", f"Content-Length: {len(body)}"]
    pad = [f"X-Pad-{n}: p" for n in range(MAX_FIELDS - len(fixed))]
    request = ("POST /webhooks/jira HTTP/1.1\r\n" + "".join(f"{h}\r\n" for h in fixed + pad) + "\r\n").encode()
    with connect(serve) as sock:
        sock.sendall(request + body)
        status, _, answer = read_response(sock)
    assert status == 202, answer


def test_many_tiny_header_fields_on_many_connections_leave_memory_bounded(serve: Serve) -> None:
    """90 connections each sending 16,000 one-byte headers (64 KiB, within the header limit) and then holding
    for the body: the parsed headers took ~170 MiB before the field limit."""
    assert serve.proc is not None
    baseline = rss_bytes(serve.proc.pid)
    socks = [connect(serve) for _ in range(90)]
    try:
        for s in socks:
            s.sendall(b"POST /webhooks/jira HTTP/1.1\r\nHost: x\r\n" + b"a:\r\n" * 16000 + b"Content-Length: 9\r\n\r\n")
        peak = baseline
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            peak = max(peak, rss_bytes(serve.proc.pid))
            time.sleep(0.02)
    finally:
        for s in socks:
            s.close()
    growth = peak - baseline
    assert growth < 40 * 1024 * 1024, f"RSS grew {growth / 2**20:.1f} MiB"


def _stream_trailers(sock: object, stop: float) -> None:
    assert hasattr(sock, "sendall")
    try:
        sock.sendall(b"POST /webhooks/jira HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1\r\n{\r\n0\r\n")
        while time.monotonic() < stop:
            sock.sendall(b"a:\r\n" * 16384)
    except OSError:
        pass


def test_endless_trailers_are_refused_and_memory_stays_bounded(serve: Serve) -> None:
    assert serve.proc is not None
    baseline = rss_bytes(serve.proc.pid)
    stop = time.monotonic() + 0.9  # under the 1 s body deadline of these tests
    socks = [connect(serve) for _ in range(8)]
    senders = [threading.Thread(target=_stream_trailers, args=(s, stop)) for s in socks]
    for t in senders:
        t.start()
    peak = baseline
    while any(t.is_alive() for t in senders):
        peak = max(peak, rss_bytes(serve.proc.pid))
        time.sleep(0.01)
    answers = []
    for s in socks:
        try:
            answers.append(read_response(s)[0])
        except OSError:
            answers.append(0)
        s.close()
    growth = peak - baseline
    assert growth < 16 * 1024 * 1024, f"RSS grew {growth / 2**20:.1f} MiB under 8 trailer floods"
    assert answers.count(431) >= 6, answers


def test_one_long_trailer_value_is_refused(serve: Serve) -> None:
    """A trailer value is buffered whole by the parser: its bytes count like a header's."""
    with connect(serve) as sock:
        sock.sendall(b"POST /webhooks/jira HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1\r\n{\r\n0\r\nX: ")
        try:
            for _ in range(200):  # 12.5 MiB, never ending the value
                sock.sendall(b"a" * 65536)
        except OSError:
            pass
        status, _, body = read_response(sock)
    assert status == 431, body


def test_a_chunked_webhook_with_a_trailer_is_served(serve: Serve) -> None:
    body = jira_body(issue_id="20102")
    head = (f"POST /webhooks/jira HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            f"X-Hub-Signature: {sign(body)}\r\nX-Atlassian-Webhook-Identifier: edge-trailer\r\n\r\n").encode()
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 100]), body[i:i + 100]) for i in range(0, len(body), 100))
    with connect(serve) as sock:
        sock.sendall(head + chunks + b"0\r\nX-Checksum: abc\r\n\r\n")
        status, _, answer = read_response(sock)
    assert status == 202, answer


def test_a_deep_pipeline_never_read_is_cut_off_and_memory_stays_bounded(tmp_path: Path) -> None:
    """Thousands of pipelined requests in one write, answers never read: each parsed request was queued (about
    1.7 MiB per connection, past the documented bound at the connection cap), a false 431 cut some (the header
    limit counted whole requests), and the refusal's half-close made the request being answered log a
    traceback. Past a pipeline depth the connection is closed; a client that pipelines a few is still served."""
    serve = Serve(serve_env(tmp_path)).start()
    assert serve.proc is not None
    baseline = rss_bytes(serve.proc.pid)
    request = b"POST /webhooks/nope HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"
    socks = [connect(serve) for _ in range(60)]
    peak = baseline
    try:
        for s in socks:
            s.sendall(request * 3500)
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            peak = max(peak, rss_bytes(serve.proc.pid))
            time.sleep(0.02)
        closed = 0
        for s in socks:
            s.settimeout(3)
            try:
                while s.recv(65536):
                    pass
                closed += 1
            except ConnectionError:
                closed += 1
    finally:
        for s in socks:
            s.close()
        assert serve.stop() == 0, serve.output()
    growth = peak - baseline
    assert growth < 40 * 1024 * 1024, f"RSS grew {growth / 2**20:.1f} MiB"
    assert closed == len(socks)
    output = serve.output()
    assert "Traceback" not in output and "(431)" not in output, output
    assert "(closed unanswered): more than 32 requests pipelined" in output


def test_a_few_pipelined_webhooks_are_all_answered_in_order(serve: Serve) -> None:
    requests = b""
    for n in range(8):
        body = jira_body(issue_id=f"2020{n}")
        requests += (f"POST /webhooks/jira HTTP/1.1\r\nHost: x\r\nX-Hub-Signature: {sign(body)}\r\n"
                     f"X-Atlassian-Webhook-Identifier: edge-pipe-{n}\r\nContent-Length: {len(body)}\r\n\r\n").encode()
        requests += body
    with connect(serve) as sock, sock.makefile("rb") as answers:
        sock.sendall(requests)
        for _ in range(8):
            assert answers.readline().startswith(b"HTTP/1.1 202 ")
            length = 0
            while (line := answers.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            assert json.loads(answers.read(length))["stored"] == 1


def test_expect_100_continue_with_an_over_limit_length_gets_the_413_not_an_invitation(serve: Serve) -> None:
    """A client asking before sending 5 MB is told no at once, not invited to send it to be discarded."""
    with connect(serve) as sock:
        sock.sendall(b"POST /webhooks/jira HTTP/1.1\r\nHost: x\r\nContent-Length: 5000000\r\n"
                     b"Expect: 100-continue\r\n\r\n")
        status, headers, body = read_response(sock)
    assert status == 413, body
    assert headers["connection"] == "close"
