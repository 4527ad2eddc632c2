"""Build a real Service (store, rules, engine, delivery) against a fake clock and a mock PagerDuty."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from kernel.clock import FakeClock
from kernel.model import TicketChange
from sync.store import Store
from ticketpager.service import Service
from ticketpager.settings import Settings


def make_service(db_url: str, rules_path: Path, pd_url: str, clock: FakeClock, **settings: Any) -> Service:
    pagerduty = {"events_url": pd_url, "backoff_base_seconds": 1.0, "backoff_cap_seconds": 60.0}
    pagerduty.update(settings.pop("pagerduty", {}))
    config = Settings(
        _env_file=None,  # type: ignore[call-arg]
        database_url=db_url,
        rules_path=rules_path,
        pagerduty=pagerduty,
        **settings,
    )
    store = Store(db_url)
    store.upgrade()
    return Service(config, clock=clock, store=store)


def wait_until(condition: Callable[[], bool], seconds: float = 20.0, *, every: float = 0.05) -> bool:
    """Whether ``condition`` holds within ``seconds`` of real time (a thread or a process of the service's is at
    work), asked every ``every`` seconds."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(every)
    return False


def receive(service: Service, changes: Sequence[TicketChange]) -> int:
    """Store changes the way the webhook writer does (one transaction, deduped)."""
    return service.store.store_webhook_rows([service.store.webhook_rows(changes)])[0]
