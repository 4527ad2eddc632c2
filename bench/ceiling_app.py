"""A second baseline: the least a *durable* webhook endpoint can do, on the same framework.

Starlette reads the body, parses it with orjson, and one writer thread group-commits the raw bodies to
SQLite (WAL, ``synchronous=FULL``) with the stdlib driver before the 202 — the fastest durable design the
project's pre-build measurements found (group commit, "drain what is queued", no wait window), with no
signature check, no normalization and no ORM. Batches are capped at 512 like ticketpager's writer. It
shows what the machine allows in this run; ticketpager does all of that plus verification and
normalization.
"""

from __future__ import annotations

import asyncio
import os
import queue
import sqlite3
import tempfile
import threading
import time
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

_queue: queue.SimpleQueue[tuple[tuple[Any, ...], asyncio.AbstractEventLoop, asyncio.Future[None]]] = queue.SimpleQueue()


MAX_BATCH = 512  # as sync/ingest.py


def _done(futures: list[asyncio.Future[None]], error: BaseException | None) -> None:
    for future in futures:
        if not future.done():
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(error)


def _writer(path: str) -> None:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE IF NOT EXISTS hooks (id INTEGER PRIMARY KEY, source TEXT, received REAL, body BLOB)")
    while True:
        items = [_queue.get()]
        while len(items) < MAX_BATCH:
            try:
                items.append(_queue.get_nowait())
            except queue.Empty:
                break
        error: BaseException | None = None
        try:
            db.execute("BEGIN IMMEDIATE")
            db.executemany("INSERT INTO hooks (source, received, body) VALUES (?, ?, ?)", [r for r, _, _ in items])
            db.execute("COMMIT")
        except sqlite3.Error as exc:  # every waiter hears about it (a 500), none hangs
            error = exc
            if db.in_transaction:
                db.execute("ROLLBACK")
        by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
        for _, loop, future in items:
            by_loop.setdefault(loop, []).append(future)
        for loop, futures in by_loop.items():
            loop.call_soon_threadsafe(_done, futures, error)


_path = os.environ.get("CEILING_DB") or os.path.join(tempfile.mkdtemp(), "ceiling.db")  # noqa: PTH118
threading.Thread(target=_writer, args=(_path,), daemon=True).start()


async def hook(request: Request) -> Response:
    body = await request.body()
    orjson.loads(body)
    loop = asyncio.get_running_loop()
    future: asyncio.Future[None] = loop.create_future()
    _queue.put(((request.path_params["source"], time.time(), body), loop, future))
    await future
    return Response(b'{"status":"accepted"}', status_code=202, media_type="application/json")


app = Starlette(routes=[Route("/webhooks/{source}", hook, methods=["POST"])])
