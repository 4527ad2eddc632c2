"""Hostile connections for the fault harness (issue 13, items 1 and 2), run against the replicas during the load.

* header floods: ``POST /webhooks/jira`` with an ``X-Big:`` header streamed for up to 64 MiB, never ending
  the header block (the server must answer 431 or close, keeping at most its header limit per connection);
* slowloris: connections that send one header line per interval, one body byte per interval, or nothing
  at all (the server must cut each off at its header or body deadline);
* the replicas' resident memory (``VmRSS`` from ``/proc/<pid>/status``), sampled all along.

The harness reports the peak RSS (the memory bound) next to the webhooks/s it held meanwhile.
"""

from __future__ import annotations

import re
import select
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

FLOOD_HEAD = b"POST /webhooks/jira HTTP/1.1\r\nHost: x\r\nX-Big: "
FLOOD_BYTES = 64 * 1024 * 1024  # the reproduction: 64 MiB of an unfinished header
FLOOD_CHUNK = b"a" * 65536
SLOW_KINDS = ("headers", "body", "silent")


@dataclass
class EdgeReport:
    floods: dict[str, int] = field(default_factory=dict)  # outcome ("431", "closed", "timeout", …) -> count
    flood_bytes_sent: int = 0
    slowloris: dict[str, int] = field(default_factory=dict)  # "<kind> <outcome>" -> count
    slowloris_cut_seconds: list[float] = field(default_factory=list)  # how long each lasted before the cut
    rss_baseline_mb: float = 0.0  # highest replica RSS before the attack began
    rss_peak_mb: float = 0.0  # highest replica RSS while it ran
    rss_samples: int = 0

    def lines(self) -> list[str]:
        floods = ", ".join(f"{k} x{v}" for k, v in sorted(self.floods.items())) or "none"
        slow = ", ".join(f"{k} x{v}" for k, v in sorted(self.slowloris.items())) or "none"
        cut = max(self.slowloris_cut_seconds, default=float("nan"))
        return [
            f"edge attack: header floods {sum(self.floods.values())} ({floods}), "
            f"{self.flood_bytes_sent / 2**20:.0f} MiB of header sent",
            f"edge attack: slowloris connections {sum(self.slowloris.values())} ({slow}), "
            f"longest before the cut {cut:.1f} s",
            f"edge attack: replica RSS peak {self.rss_peak_mb:.0f} MiB (before the attack {self.rss_baseline_mb:.0f} "
            f"MiB; {self.rss_samples} samples)",
        ]


def rss_mb(pid: int) -> float | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None  # the replica is being restarted
    match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
    return int(match.group(1)) / 1024 if match else None


class EdgeAttack:
    """Runs ``floods`` header-flood and ``slow`` slowloris threads against ``ports()`` until ``until``."""

    def __init__(self, ports: Callable[[], Sequence[int]], pids: Callable[[], Sequence[int]], until: float,
                 floods: int = 4, slow: int = 6, interval: float = 0.5) -> None:
        self.ports, self.pids, self.until, self.interval = ports, pids, until, interval
        self.report = EdgeReport()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._flood, args=(i,), name=f"flood-{i}", daemon=True)
                        for i in range(floods)]
        self.threads += [threading.Thread(target=self._slow, args=(i, SLOW_KINDS[i % len(SLOW_KINDS)]),
                                          name=f"slowloris-{i}", daemon=True) for i in range(slow)]
        self.threads.append(threading.Thread(target=self._sample, name="rss", daemon=True))

    def start(self) -> None:
        self.report.rss_baseline_mb = max((m for m in map(rss_mb, self.pids()) if m), default=0.0)
        for t in self.threads:
            t.start()

    def join(self, timeout: float) -> None:
        for t in self.threads:
            t.join(timeout=timeout)

    def _count(self, table: dict[str, int], key: str) -> None:
        with self.lock:
            table[key] = table.get(key, 0) + 1

    def _port(self, n: int) -> int:
        ports = self.ports()
        return ports[n % len(ports)]

    # -- header floods ----------------------------------------------------------------------------------
    def _flood(self, worker: int) -> None:
        n = worker
        while time.monotonic() < self.until:
            n += 1
            try:
                sock = socket.create_connection(("127.0.0.1", self._port(n)), timeout=5)
            except OSError:
                time.sleep(0.2)  # a replica down (SIGKILL fault): try the next one
                continue
            with sock:
                outcome, sent = self._flood_one(sock)
            with self.lock:
                self.report.flood_bytes_sent += sent
            self._count(self.report.floods, outcome)

    def _flood_one(self, sock: socket.socket) -> tuple[str, int]:
        sent = 0
        try:
            sock.sendall(FLOOD_HEAD)
            while sent < FLOOD_BYTES and time.monotonic() < self.until:
                readable, _, _ = select.select([sock], [], [], 0)
                if readable:
                    return _status(sock.recv(65536)), sent
                sock.sendall(FLOOD_CHUNK)
                sent += len(FLOOD_CHUNK)
        except TimeoutError:
            return "send timeout", sent
        except OSError:
            return "closed", sent
        return ("never refused" if sent >= FLOOD_BYTES else "load over"), sent

    # -- slowloris ---------------------------------------------------------------------------------------------
    def _slow(self, worker: int, kind: str) -> None:
        n = worker
        while time.monotonic() < self.until:
            n += 1
            try:
                sock = socket.create_connection(("127.0.0.1", self._port(n)), timeout=self.interval)
            except OSError:
                time.sleep(0.2)
                continue
            started = time.monotonic()
            with sock:
                outcome = self._slow_one(sock, kind)
            if outcome != "load over":
                with self.lock:
                    self.report.slowloris_cut_seconds.append(time.monotonic() - started)
            self._count(self.report.slowloris, f"{kind} {outcome}")

    def _slow_one(self, sock: socket.socket, kind: str) -> str:
        try:
            if kind == "headers":
                sock.sendall(b"POST /webhooks/jira HTTP/1.1\r\nHost: x\r\n")
            elif kind == "body":
                sock.sendall(b"POST /webhooks/jira HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
            line = 0
            while time.monotonic() < self.until:
                try:
                    answer = sock.recv(65536)
                    return _status(answer) if answer else "closed"
                except TimeoutError:
                    pass
                line += 1
                if kind == "headers":
                    sock.sendall(b"X-Slow-%d: a\r\n" % line)
                elif kind == "body":
                    sock.sendall(b"{")
        except OSError:
            return "closed"
        return "load over"

    # -- memory ----------------------------------------------------------------------------------------------
    def _sample(self) -> None:
        while time.monotonic() < self.until:
            peak = max((m for m in map(rss_mb, self.pids()) if m), default=0.0)
            with self.lock:
                self.report.rss_peak_mb = max(self.report.rss_peak_mb, peak)
                self.report.rss_samples += 1
            time.sleep(0.1)


def _status(answer: bytes) -> str:
    """``"431"`` for ``HTTP/1.1 431 …``, else what the bytes were."""
    match = re.match(rb"HTTP/1\.[01] (\d{3}) ", answer)
    return match.group(1).decode() if match else f"other answer {answer[:20]!r}"
