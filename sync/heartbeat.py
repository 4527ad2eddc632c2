"""Replica heartbeats: who is alive, so a dead replica's work is taken over in seconds, a live one's never.

Each ``serve`` process writes ``replicas.heartbeat_at`` every ``engine.heartbeat_seconds`` (one UPDATE of one
row, and a count of the other replicas alive: :meth:`Heartbeat.alone`). A replica whose heartbeat is older
than ``engine.replica_timeout_seconds`` is dead (SIGKILL, OOM kill, lost node): the others then take over its outbox
claims (``claimed_by`` = ``<instance>/<worker>``) and its leases (``holder`` = ``<instance>``) without waiting for
the claim or lease to expire. A holder without a ``replicas`` row (a one-shot CLI run, an older release during a
rolling upgrade) is judged by the expiry only.

A replica that cannot write its heartbeat for that long may be presumed dead while it still runs (a database
partition, a frozen VM), so its delivery workers check :meth:`Heartbeat.healthy` before each send and stop
sending until the heartbeat gets through again.

A replica alone on its database (no other heartbeat within the timeout) lets its delivery workers mark their sends
in batches (:mod:`sync.delivery`): nobody else counts them from the outbox. A replica that starts is seen at the
others' next beat, so for up to ``engine.heartbeat_seconds`` they still batch beside it; a process without a
heartbeat (``poll --once``, a release before heartbeats) is not seen at all. Either can see the batching
replica's latest sends late, by at most a batch per worker, near a routing key's rate limit. While alone, the
replica's rate limiter also keeps its reads of the others' sends (:meth:`Heartbeat.alone_since`,
``connectors.pagerduty.ALONE_TRUST``): it counts a starting replica's sends from its own next beat, and a
process without a heartbeat's up to about ten seconds late.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Protocol

from kernel.clock import Clock
from sync.repos import cursors
from sync.store import Store

log = logging.getLogger("ticketpager.heartbeat")

FORGET_AFTER = timedelta(hours=1)  # rows of replicas silent this long are deleted when a replica starts


class HeartbeatLike(Protocol):
    def healthy(self) -> bool:
        """True while this replica's heartbeat is recent enough that no other replica can presume it dead."""
        ...

    def unbroken_since(self, when: datetime) -> bool:
        """True if the heartbeat has been :meth:`healthy` without a gap since ``when``."""
        ...

    def alone(self) -> bool:
        """True while no other replica heartbeats (as of this replica's latest beat): no other replica reads this
        replica's sends from the shared outbox (the rate limit), so they may be recorded there in batches."""
        ...


class Heartbeat:
    """This process's heartbeat. :meth:`beat` is called by the service's heartbeat thread; the delivery
    workers ask :meth:`healthy`, :meth:`unbroken_since` and :meth:`alone` (thread-safe: plain attribute reads)."""

    def __init__(
        self, store: Store, clock: Clock, instance: str, *, interval: float, timeout: float, dry_run: bool = False
    ) -> None:
        self.store = store
        self.dry_run = dry_run  # written with the first beat: a live replica refuses to start beside a dry-run one
        self.clock = clock
        self.instance = instance
        self.interval = interval
        self.timeout = timeout
        self.last_ok: datetime | None = None  # the time written by the latest heartbeat that committed
        self.resumed_at: datetime | None = None  # the first heartbeat after the latest gap (or the first ever)
        self._alone = False  # no other replica alive at the latest beat (False until a beat said so)
        self._alone_from: datetime | None = None  # the first beat of the current run of beats that saw no other

    def __repr__(self) -> str:
        return f"<Heartbeat {self.instance}>"

    @property
    def _margin(self) -> timedelta:
        """How old our last heartbeat may be while we still count as alive: the others take over at
        ``timeout``; one interval earlier we stop sending."""
        return timedelta(seconds=self.timeout - self.interval)

    def register(self) -> None:
        """First heartbeat at start; rows left by replicas gone for an hour are deleted (their claims and
        leases have long expired)."""
        now = self.clock.now()
        with self.store.begin() as conn:
            cursors.forget_silent_replicas(conn, now - FORGET_AFTER)
        self.beat()

    def beat(self) -> None:
        """Write the heartbeat (raises the database's error: the caller's loop retries). On SQLite it goes
        before background writers (one tiny UPDATE, and a count of the few ``replicas`` rows for :meth:`alone`): a busy
        engine must not make this replica look dead."""
        now = self.clock.now()
        self._alone = False  # until this beat says so: a beat that fails leaves nobody batching on an old answer
        try:
            with self.store.begin(urgent=True) as conn:
                cursors.record_beat(conn, self.instance, now, dry_run=self.dry_run)
                others = cursors.others_alive(conn, self.instance, now - timedelta(seconds=self.timeout))
        except BaseException:
            self._alone_from = None  # the run alone ends with a beat that failed
            raise
        gap = self.last_ok is None or now - self.last_ok >= self._margin
        # a run alone starts again after a gap: others may have taken over our rows and sent them meanwhile
        self._alone_from = None if others else (now if gap or self._alone_from is None else self._alone_from)
        self._alone = others == 0
        if gap:
            if self.last_ok is not None:
                log.warning(
                    "heartbeat of %s resumed after %.1f s: claims may have been taken over meanwhile",
                    self.instance,
                    (now - self.last_ok).total_seconds(),
                )
            self.resumed_at = now
        self.last_ok = now

    def healthy(self) -> bool:
        last = self.last_ok
        return last is not None and self.clock.now() - last < self._margin

    def unbroken_since(self, when: datetime) -> bool:
        resumed = self.resumed_at
        return self.healthy() and resumed is not None and resumed <= when

    def alone(self) -> bool:
        """No other replica had heartbeated within ``timeout`` at the latest beat, and that beat is recent. A
        replica that starts is seen here at this one's next beat (within ``interval``)."""
        return self._alone and self.healthy()

    def alone_since(self) -> datetime | None:
        """When the current streak alone on the database began: the first of the beats since which every beat saw no
        other replica, with no gap in the heartbeat (:meth:`beat` starts a new streak after one; None: not
        :meth:`alone` now). Whatever the other replicas had sent, read after it, stays all they sent until the
        streak ends (the rate limiter's ``ALONE_TRUST``)."""
        return self._alone_from if self.alone() else None

    def forget(self) -> None:
        """Clean stop: remove our row (our claims were handed back already)."""
        with self.store.begin() as conn:
            cursors.forget_replica(conn, self.instance)
