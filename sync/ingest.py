"""Group commit: one writer thread stores whatever webhook changes queued while the last commit ran.

HTTP handlers call :meth:`Writer.submit` and await the result; the writer drains the queue, inserts every
queued change in one transaction (deduped on source + delivery id) and resolves all the waiting futures
with one ``call_soon_threadsafe`` per event loop. Measured on this machine (see docs/performance.md):
committing per request from a thread pool collapses under SQLite's write lock, one writer that batches
what is queued keeps most of the bare endpoint's throughput. A 202 is only sent after the commit.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from kernel.model import TicketChange
from sync.metrics import METRICS
from sync.store import Store

log = logging.getLogger("ticketpager.ingest")

MAX_BATCH = 512
SUBMIT_TIMEOUT_SECONDS = 10.0  # PagerDuty and Zendesk give up on a webhook after a few seconds anyway


@dataclass
class _Item:
    rows: list[Any]  # the changes as the store will insert them (serialized on the event loop, see submit)
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[int]


def _expire(future: asyncio.Future[int], seconds: float) -> None:
    if not future.done():
        future.set_exception(TimeoutError(f"the writer did not commit within {seconds:g} s"))


def _resolve(items: list[_Item], results: list[int | BaseException]) -> None:
    for item, result in zip(items, results, strict=True):
        if item.future.done():
            continue
        if isinstance(result, BaseException):
            item.future.set_exception(result)
        else:
            item.future.set_result(result)


class Writer:
    """The single writer thread. ``on_commit`` is called after each commit that stored new changes, with how
    many (wakes the engine; duplicates are not counted)."""

    def __init__(
        self,
        store: Store,
        on_commit: Callable[[int], None] | None = None,
        *,
        submit_timeout: float = SUBMIT_TIMEOUT_SECONDS,
    ) -> None:
        self.store = store
        self.submit_timeout = submit_timeout
        self.on_commit = on_commit
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="ticketpager-writer", daemon=True)
        self.commits = 0
        self.rows = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)

    async def submit(self, changes: Sequence[TicketChange]) -> int:
        """Store ``changes`` durably; returns how many were new (the rest were duplicates).

        The rows are serialized here, on the event loop: the writer thread then only executes and commits,
        so it needs the GIL for less time per batch and its commit cycle stays short (measured).
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[int] = loop.create_future()
        self._queue.put(_Item(self.store.webhook_rows(changes), loop, future))
        # bounded: if the writer ever stalled, vendors get a 503 and retry instead of a hanging request
        # (a timer handle, not asyncio.wait_for: that wraps every request in one more task)
        timer = loop.call_later(self.submit_timeout, _expire, future, self.submit_timeout)
        try:
            return await future
        finally:
            timer.cancel()

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is None:
                break
            items = [first]
            while len(items) < MAX_BATCH:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stopping = True
                    break
                items.append(nxt)
            self._commit(items)

    def _commit(self, items: list[_Item]) -> None:
        started = time.perf_counter()
        results: list[int | BaseException] = []
        try:
            results.extend(self.store.store_webhook_rows([item.rows for item in items]))
        except Exception as exc:  # noqa: BLE001 - every waiter must hear about the failure
            if len(items) == 1:
                log.error("storing a webhook change failed: %s", exc)
                results = [exc]
            else:  # one bad request must not fail the others batched with it: commit each on its own
                log.warning("group commit of %d webhooks failed (%s); committing one by one", len(items), exc)
                results = [self._commit_one(item) for item in items]
        self.commits += 1
        METRICS.webhook_commit.observe(time.perf_counter() - started)  # a slow disk shows here first
        METRICS.webhook_commit_requests.observe(len(items))
        self.rows += sum(len(i.rows) for i, r in zip(items, results, strict=True) if isinstance(r, int))
        stored = sum(r for r in results if isinstance(r, int))
        if self.on_commit and stored:  # duplicates only (a vendor's retries): nothing for the engine
            self.on_commit(stored)
        self._resolve_all(items, results)

    def _commit_one(self, item: _Item) -> int | BaseException:
        try:
            return self.store.store_webhook_rows([item.rows])[0]
        except Exception as exc:  # noqa: BLE001
            log.error("storing a webhook change failed: %s", exc)
            return exc

    def _resolve_all(self, items: list[_Item], results: list[int | BaseException]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[int]] = {}
        for index, item in enumerate(items):
            by_loop.setdefault(item.loop, []).append(index)
        for loop, indexes in by_loop.items():
            batch = [items[i] for i in indexes]
            outcome = [results[i] for i in indexes]
            try:
                loop.call_soon_threadsafe(_resolve, batch, outcome)
            except RuntimeError:  # loop closed: the client is gone, the data is stored anyway
                pass
