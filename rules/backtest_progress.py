"""Progress of ``rules backtest`` on a terminal: pages read, tickets, elapsed time, and each wait for the
vendor's rate limit (Zendesk's export allows 10 requests a minute, so a long backtest mostly waits).

Shown on stderr only when stderr is a terminal, as one line rewritten in place; piped or redirected, the
backtest prints its report and nothing else.
"""

from __future__ import annotations

from datetime import datetime
from typing import Protocol, TextIO

from kernel.clock import Clock


class Progress(Protocol):
    def page(self, tickets: int) -> None: ...

    def waiting(self, seconds: float) -> None: ...

    def done(self) -> None: ...


class Quiet:
    """Piped output: no progress at all."""

    def page(self, tickets: int) -> None:
        pass

    def waiting(self, seconds: float) -> None:
        pass

    def done(self) -> None:
        pass


class TerminalProgress:
    """One status line on a terminal, rewritten in place (``\\r`` and erase-line)."""

    def __init__(self, stream: TextIO, source: str, clock: Clock) -> None:
        self.stream, self.source, self.clock = stream, source, clock
        self.started = clock.monotonic()
        self.pages = 0
        self.tickets = 0
        self.shown = False  # a line is on the terminal (a wait before the first page shows one too)

    def _show(self, extra: str = "") -> None:
        elapsed = int(self.clock.monotonic() - self.started)
        line = f"{self.source}: page {self.pages}, {self.tickets} tickets, {elapsed} s{extra}"
        self.stream.write(f"\r\x1b[K{line}")
        self.stream.flush()
        self.shown = True

    def page(self, tickets: int) -> None:
        self.pages += 1
        self.tickets = tickets
        self._show()

    def waiting(self, seconds: float) -> None:
        shown = f"{seconds:.1f}".removesuffix(".0")
        self._show(f" — waiting {shown} s for {self.source} (its rate limit, or a retry)")

    def done(self) -> None:
        if self.shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self.shown = False


def progress_for(stream: TextIO, source: str, clock: Clock) -> Progress:
    """Terminal progress if ``stream`` is a terminal, else none."""
    isatty = getattr(stream, "isatty", None)
    return TerminalProgress(stream, source, clock) if callable(isatty) and isatty() else Quiet()


class ReportingClock:
    """The connector's clock: every sleep (request pacing, a 429's Retry-After, a retry's backoff) is a wait
    for the vendor, shown before it starts."""

    def __init__(self, inner: Clock, progress: Progress) -> None:
        self.inner, self.progress = inner, progress

    def now(self) -> datetime:
        return self.inner.now()

    def monotonic(self) -> float:
        return self.inner.monotonic()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            self.progress.waiting(seconds)
        self.inner.sleep(seconds)
