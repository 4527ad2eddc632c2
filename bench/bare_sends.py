"""The floor of one page's send: a bare ``requests.Session`` POSTing ``--count`` Events API bodies, one after
another, to ``--url`` (the bench's PagerDuty mock), and this process's CPU seconds for them printed.

``bench.pipeline`` runs it beside the minimal durable endpoint: together they are what any design that stores
each webhook durably and then POSTs its page with ``requests`` (the project's one HTTP stack) costs at the
least, so the pipeline's CPU per 1,000 reads against that floor. It sends the cheapest way through requests
the events sink knows (:func:`poster`): the session does not re-read the environment's proxy settings per
request (``trust_env`` off), and its request is prepared once and copied per body. A floor built on
``session.post`` would cost 0.17 ms more per page than the sink itself (docs/performance.md, the ninth session).

With ``--threads N`` it sends from N threads at once, each with its own session taking the next page when its
last one is answered: the most that N in-flight sends reach against the same mock on this machine, the
baseline of goal 5 (``bench.pipeline`` reads their arrivals at the mock).

Run:  python -m bench.bare_sends --url http://127.0.0.1:PORT/v2/enqueue [--count 1000] [--threads N]
"""

from __future__ import annotations

import argparse
import itertools
import json
import threading
import time
from collections.abc import Callable

import requests

ID_BASE = 100000  # bench.pipeline's ticket numbers: the mock's bookkeeping parses them from the dedup key


def body(n: int) -> bytes:
    """An event of the pipeline's size and shape (a triggered Jira page)."""
    event = {
        "routing_key": f"benchkey{n % 100:03d}".ljust(32, "0"),
        "event_action": "trigger",
        "dedup_key": f"tp/jira/{ID_BASE + n}/bare",
        "payload": {
            "summary": f"[P{n % 100:03d}-{n}] Checkout fails for every customer paying by card, bench ticket {n}",
            "source": "jira",
            "severity": "critical",
            "custom_details": {"ticket": f"P{n % 100:03d}-{n}", "status": "Open", "priority": "Highest"},
        },
        "links": [{"href": f"https://example.atlassian.net/browse/P{n % 100:03d}-{n}", "text": "ticket"}],
        "client": "ticketpager",
    }
    return json.dumps(event, separators=(",", ":")).encode()


def poster(url: str) -> Callable[[bytes], requests.Response]:
    """POST a body to ``url`` the cheapest way through requests, as the events sink does: one session, its
    request prepared once and copied per body (``session.post`` merges the session's settings per request)."""
    session = requests.Session()
    session.trust_env = False
    template = session.prepare_request(requests.Request("POST", url, headers={"Content-Type": "application/json"}))

    def post(data: bytes) -> requests.Response:
        request = template.copy()
        request.prepare_body(data, None)
        return session.send(request, timeout=10)

    return post


def cpu_for(url: str, count: int) -> float:
    post = poster(url)
    bodies = [body(n) for n in range(count)]
    post(bodies[0])  # connect first
    start = time.process_time()
    for data in bodies:
        post(data).raise_for_status()
    return time.process_time() - start


def cpu_concurrently(url: str, count: int, threads: int) -> float:
    """``count`` pages sent by ``threads`` senders at once, as delivery workers send: CPU seconds. Raises the
    first failure of any sender (a page not sent must not pass for a short, cheap run)."""
    numbers = itertools.count()  # next() is atomic under the GIL: each page is sent once
    bodies = [body(n) for n in range(count)]
    failures: list[BaseException] = []

    def sender() -> None:
        post = poster(url)
        try:
            while (n := next(numbers)) < count:
                post(bodies[n]).raise_for_status()
        except Exception as exc:  # noqa: BLE001 - reported by the main thread
            failures.append(exc)

    workers = [threading.Thread(target=sender) for _ in range(threads)]
    start = time.process_time()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    if failures:
        raise RuntimeError(f"{len(failures)} sender(s) failed: {failures[0]!r}")
    return time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=0, help="senders at once (0: one session, one after another)")
    args = parser.parse_args()
    if args.threads > 0:
        print(f"{cpu_concurrently(args.url, args.count, args.threads):.4f}")
    else:
        print(f"{cpu_for(args.url, args.count):.4f}")


if __name__ == "__main__":
    main()
