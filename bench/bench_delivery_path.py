"""CPU cost of what issue 13 (items 4, 6) added to each PagerDuty send, against the send itself.

* the rate limiter's check with a full window (120 sends of one routing key counted), reserve + finished;
* the body: the stored wire bytes posted as is, against the former path (parse the stored text, let
  requests serialize it again);
* baseline in the same run: one ``PagerDutySink.send`` of the same body to the local PagerDuty fake (process
  CPU, the fake's server thread included).

Run: ``python -m bench.bench_delivery_path``. Prints CPU-microseconds per operation and ratios to the send.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from connectors.pagerduty import PagerDutySink, RateLimiter, build_event
from kernel import jsonutil
from kernel.clock import FakeClock
from kernel.model import EventAction, PlannedEvent, TriggerSpec
from tests.factories import ticket
from tests.fakes.pagerduty_server import MockPagerDuty

KEY = "0123456789abcdef0123456789abcdef"


def _cpu_us(fn: Callable[[], object], n: int) -> float:
    start = time.process_time()
    for _ in range(n):
        fn()
    return (time.process_time() - start) / n * 1e6


def main() -> None:
    spec = TriggerSpec(routing_key=KEY, severity="critical", summary="s", source="jira:OPS-1",
                       custom_details={"description": "x" * 2000})
    event = PlannedEvent(rule="r", action=EventAction.TRIGGER, dedup_key="ticketpager/jira/1/r/1", routing_key=KEY,
                         generation=1, reason="matched", trigger=spec)
    stored = jsonutil.dumps(build_event(event, ticket()))

    clock = FakeClock()
    limiter = RateLimiter(120, clock)

    def check() -> None:
        _, sending = limiter.reserve(KEY)
        if sending is not None:
            sending.finished()
        clock.advance(0.5)  # 120 a minute: the window stays full

    with MockPagerDuty() as pd:
        sink = PagerDutySink(pd.url)
        data = stored.encode()
        send = _cpu_us(lambda: sink.send(data), 2_000)
    limiter_us = _cpu_us(check, 100_000)
    body_new = _cpu_us(lambda: stored.encode("utf-8", "replace"), 100_000)
    body_old = _cpu_us(lambda: json.dumps(jsonutil.loads(stored)).encode(), 100_000)
    print(f"body {len(stored)} bytes; one send to the local fake: {send:.0f} CPU-us (baseline)")
    print(f"rate limiter check, full window: {limiter_us:.2f} CPU-us ({limiter_us / send:.2%} of a send)")
    print(f"body prep, stored bytes as sent: {body_new:.2f} CPU-us; former re-serialization: {body_old:.2f} CPU-us "
          f"({(body_old - body_new) / send:.2%} of a send saved)")


if __name__ == "__main__":
    main()
