"""``ticketpager status --check``: what in the status report needs a person, one sentence per problem.

The same conditions as the alerts in docs/operations.md (dead letters, failing changes, a failing poll, an
outbox that does not drain), for hosts without Prometheus: cron, a Nagios-style check, a deploy gate.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sync.store import Status

#: The default of ``--max-outbox-age``: the ``TicketpagerOutboxStuck`` alert's threshold (docs/operations.md).
DEFAULT_MAX_OUTBOX_AGE = timedelta(minutes=5)


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" + ("" if count == 1 else "s")


def _ago(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h"


def problems(status: Status, now: datetime, max_outbox_age: timedelta = DEFAULT_MAX_OUTBOX_AGE) -> list[str]:
    """One line per problem, most urgent first; empty when nothing needs attention."""
    found: list[str] = []
    if status.dead_letters:
        found.append(
            f"{_plural(status.dead_letters, 'dead letter')}: refused by PagerDuty or the ticket system, or out of "
            "retries; nothing more is sent for them (see 'ticketpager deadletters list', then 'retry')"
        )
    if status.outbox_oldest is not None and now - status.outbox_oldest > max_outbox_age:
        found.append(
            f"outbox: the oldest pending event has waited {_ago(now - status.outbox_oldest)} (over "
            f"{_ago(max_outbox_age)}): PagerDuty unreachable or rate-limiting, or no 'ticketpager serve' running"
        )
    if status.changes_failed:
        found.append(
            f"{_plural(status.changes_failed, 'ticket change')} could not be processed (see the log: "
            "'change … failed')"
        )
    for cursor in status.cursors:
        if cursor["last_error"]:
            found.append(
                f"{cursor['source']}: the last poll failed ({cursor['last_error_kind']}) at "
                f"{cursor['last_error_at']}: {cursor['last_error']}"
            )
    return found
