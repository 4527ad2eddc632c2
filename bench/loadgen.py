"""Small HTTP/1.1 load generators (asyncio, raw keep-alive sockets, pre-built requests): closed and open loop.

Used for both the baseline and ticketpager in the same run, so the ratio between them is fair even though
the generator shares the machine's cores with the server. Prints nothing; returns figures.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field


@dataclass
class LoadResult:
    requests: int
    errors: int
    seconds: float
    latencies: list[float]
    statuses: dict[int, int]
    started: float = 0.0  # time.perf_counter() when the first request was due (open loop)
    failed: list[int] = field(default_factory=list)  # open loop: indexes not answered 2xx

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def pct(self, p: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(len(ordered) * p))] * 1000


def build_request(host: str, port: int, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", "Content-Type: application/json",
             f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    if length:
        await reader.readexactly(length)
    return status


async def _run(host: str, port: int, requests: Sequence[bytes], seconds: float, connections: int) -> LoadResult:
    feed = itertools.cycle(requests) if len(requests) < 2 else iter(requests)
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    errors = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while time.perf_counter() < deadline:
                try:
                    raw = next(feed)
                except StopIteration:
                    return
                t0 = time.perf_counter()
                writer.write(raw)
                status = await _read_response(reader)
                latencies.append(time.perf_counter() - t0)
                statuses[status] = statuses.get(status, 0) + 1
                if status >= 300:
                    errors += 1
        finally:
            writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(connections)))
    elapsed = time.perf_counter() - start
    return LoadResult(len(latencies), errors, elapsed, latencies, statuses)


def run(host: str, port: int, requests: Sequence[bytes], seconds: float = 10.0, connections: int = 32) -> LoadResult:
    return asyncio.run(_run(host, port, requests, seconds, connections))


async def _open_loop(
    host: str, port: int, make: Callable[[int], bytes], rate: float, count: int, max_connections: int
) -> LoadResult:
    """Request ``i`` is due at ``start + i / rate`` whatever happened to the ones before (open loop); its
    latency runs from that due time, so a stalled server is not hidden by requests that were never sent
    (no coordinated omission). Idle keep-alive connections are reused; a new one is opened when all are
    busy, up to ``max_connections`` (beyond that a request waits, and the wait counts)."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    errors = 0
    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    slots = asyncio.Semaphore(max_connections)

    failed: list[int] = []

    async def one(index: int, raw: bytes, due: float) -> None:
        nonlocal errors
        async with slots:
            conn = idle.pop() if idle else await asyncio.open_connection(host, port)
            reader, writer = conn
            try:
                writer.write(raw)
                status = await _read_response(reader)
            except (OSError, asyncio.IncompleteReadError):
                errors += 1
                failed.append(index)
                writer.close()
                return
            latencies.append(time.perf_counter() - due)
            statuses[status] = statuses.get(status, 0) + 1
            if status >= 300:
                errors += 1
                failed.append(index)
            idle.append(conn)

    tasks: list[asyncio.Task[None]] = []
    start = time.perf_counter()
    for i in range(count):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, make(i), due)))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - start
    for _, writer in idle:
        writer.close()
    return LoadResult(len(latencies), errors, elapsed, latencies, statuses, started=start, failed=failed)


def open_loop(
    host: str, port: int, make: Callable[[int], bytes], rate: float, count: int, max_connections: int = 256
) -> LoadResult:
    """Send ``count`` requests (``make(i)`` builds the i-th) at a fixed ``rate`` per second, open loop."""
    return asyncio.run(_open_loop(host, port, make, rate, count, max_connections))
