"""Login rate limiting: after :data:`MAX_FAILURES` failed logins from one client address within
:data:`WINDOW_SECONDS`, that address gets 429 for :data:`BLOCK_SECONDS` (its credentials are not even checked).

An attempt is counted as failed *before* its credentials are checked (:meth:`LoginLimiter.attempt`), and
forgotten if they turn out right: the check (PBKDF2) takes long enough for many guesses sent at once to be in it
together, and counting after it would let them all through.

In memory, per replica (an attacker spread over replicas gets N tries on each: still a handful a minute against
a 24-byte token or a PBKDF2 hash), and bounded: at most :data:`MAX_ADDRESSES` addresses are tracked; when full,
the stale ones are dropped, then the least recently seen. Time comes from the injected clock (monotonic).
OWASP's advice this follows: https://cheatsheetseries.owasp.org/cheatsheets/Authentication_Cheat_Sheet.html#login-throttling
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from prometheus_client import Counter

from kernel.clock import Clock
from sync.metrics import METRICS

MAX_FAILURES = 10  # failed logins per address …
WINDOW_SECONDS = 600.0  # … within this many seconds …
BLOCK_SECONDS = 900.0  # … and the address gets 429 for this long
MAX_ADDRESSES = 10_000  # addresses tracked at most (≈ 2 MB at the worst)

#: console logins by outcome: ok, failed (wrong credentials), rate_limited (answered 429, not checked)
LOGINS = Counter(
    "ticketpager_console_logins_total",
    "Console login attempts by outcome (ok, failed, rate_limited)",
    ["outcome"],
    registry=METRICS.registry,
)
for _outcome in ("ok", "failed", "rate_limited"):
    LOGINS.labels(_outcome)  # at zero from the start, so rate() sees the first one


@dataclass
class _Address:
    failures: deque[float] = field(default_factory=deque)  # monotonic times of the recent failures
    blocked_until: float = 0.0


class LoginLimiter:
    """Counts failed logins per client address; :meth:`blocked` says for how long an address is refused."""

    def __init__(
        self,
        clock: Clock,
        *,
        max_failures: int = MAX_FAILURES,
        window: float = WINDOW_SECONDS,
        block: float = BLOCK_SECONDS,
        max_addresses: int = MAX_ADDRESSES,
    ) -> None:
        if max_failures < 1 or window <= 0 or block <= 0 or max_addresses < 1:
            raise ValueError("login limits must be positive")
        self.clock = clock
        self.max_failures = max_failures
        self.window = window
        self.block = block
        self.max_addresses = max_addresses
        self._seen: OrderedDict[str, _Address] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._seen)

    def blocked(self, address: str) -> float:
        """Seconds ``address`` is still refused (0: it may try)."""
        now = self.clock.monotonic()
        with self._lock:
            entry = self._seen.get(address)
            return max(0.0, entry.blocked_until - now) if entry else 0.0

    def attempt(self, address: str) -> float:
        """Take one login attempt for ``address`` before its credentials are checked: 0 if it may go on, the
        attempt then counted as a failed one (the one that reaches the limit starts the block at once, so
        attempts made while it is checked are refused), else the seconds the address is still refused (this
        attempt not counted). At most :attr:`max_failures` attempts per address are checked within the window,
        however many arrive together."""
        now = self.clock.monotonic()
        with self._lock:
            entry = self._seen.get(address)
            if entry is not None and entry.blocked_until > now:
                return entry.blocked_until - now
            if entry is None:
                self._make_room(now)
                entry = self._seen[address] = _Address()
            self._seen.move_to_end(address)
            entry.failures.append(now)
            while entry.failures and entry.failures[0] <= now - self.window:
                entry.failures.popleft()
            if len(entry.failures) >= self.max_failures:
                entry.failures.clear()
                entry.blocked_until = now + self.block
            return 0.0

    def succeeded(self, address: str) -> None:
        """A good login forgets the address's failures (its own attempt, counted by :meth:`attempt`, too)."""
        with self._lock:
            self._seen.pop(address, None)

    def _make_room(self, now: float) -> None:
        if len(self._seen) < self.max_addresses:
            return
        stale = [a for a, e in self._seen.items() if e.blocked_until <= now and _last(e) <= now - self.window]
        for address in stale:
            del self._seen[address]
        while len(self._seen) >= self.max_addresses:
            self._seen.popitem(last=False)  # the least recently seen


def _last(entry: _Address) -> float:
    return entry.failures[-1] if entry.failures else float("-inf")
