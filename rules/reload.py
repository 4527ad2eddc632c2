"""Hot reload: :class:`RuleStore` serves the last good :class:`RuleSet` and swaps in a new one atomically.

A new set replaces the old one only if ALL of it validates; otherwise the old set stays, ``last_error``
holds the errors (shown in ``/readyz``) and ``reload_failures`` counts (a metric). Any other exception
during a reload (a bug, an unreadable file) counts the same way: it never leaves a stale ``last_error``.
``start_watching`` runs a daemon thread that polls the files' modification times (no extra dependency);
SIGHUP handling is the service's, which simply calls :meth:`RuleStore.reload`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path

from kernel.clock import Clock, SystemClock
from rules.evaluator import RuleSet
from rules.load import load_rules
from rules.loader import RuleFileErrors, relative_name, rule_files

log = logging.getLogger(__name__)

Signature = tuple[tuple[str, int, int], ...]


def files_signature(path: Path) -> Signature:
    """(relative path, mtime_ns, size) of every rule file under ``path``, subfolders included (the files
    :func:`rules.loader.rule_files` reads); changes when any file does, or one is added or removed."""
    try:
        files, _ = rule_files(path)
        out = []
        for file in files:
            stat = file.stat()
            out.append((relative_name(file, path), stat.st_mtime_ns, stat.st_size))
        return tuple(out)
    except OSError:
        return ()


class RuleStore:
    """The current rule set of a running service, reloadable at any time from any thread."""

    def __init__(self, path: str | Path, env: Mapping[str, str] | None = None, clock: Clock | None = None) -> None:
        self.path = Path(path)
        self.env = env
        self.clock: Clock = clock or SystemClock()
        self.last_error: str | None = None
        self.reload_failures = 0
        self.reloads = 0
        self._lock = threading.Lock()
        self._signature = files_signature(self.path)
        self._current: RuleSet = load_rules(self.path, env)  # no good set yet: the error propagates
        self.loaded_at: datetime = self.clock.now()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.reloaded = threading.Event()  # set after every reload attempt (tests and admin endpoints wait on it)

    @property
    def current(self) -> RuleSet:
        return self._current

    def reload(self) -> bool:
        """Load the files again; swap only if the whole set validates. True if the new set is in use."""
        with self._lock:
            self._signature = files_signature(self.path)
            try:
                ruleset = load_rules(self.path, self.env)
            except RuleFileErrors as exc:
                self.reload_failures += 1
                self.last_error = str(exc)
                log.error(
                    "rule reload failed; keeping rule set %s (%d errors):\n%s",
                    self._current.digest,
                    len(exc.errors),
                    exc,
                )
                self.reloaded.set()
                return False
            except Exception as exc:  # noqa: BLE001 - any failure is a failed reload: the last good set stays
                self.reload_failures += 1
                self.last_error = f"rule reload failed unexpectedly: {type(exc).__name__}: {exc}"
                log.exception("rule reload failed unexpectedly; keeping rule set %s", self._current.digest)
                self.reloaded.set()
                return False
            previous = self._current.digest
            self._current = ruleset
            self.last_error = None
            self.loaded_at = self.clock.now()
            self.reloads += 1
            if previous != ruleset.digest:
                log.info("rules reloaded: %s → %s (%d rules)", previous, ruleset.digest, len(ruleset))
            self.reloaded.set()
            return True

    def check_for_changes(self) -> bool | None:
        """Reload if any rule file changed since the last (attempted) load; None if nothing changed."""
        if files_signature(self.path) == self._signature:
            return None
        return self.reload()

    def start_watching(self, interval: float = 2.0) -> None:
        """Poll the files' mtimes every ``interval`` seconds in a daemon thread."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()

        def run() -> None:
            while not self._stop.wait(interval):
                try:
                    self.check_for_changes()
                except Exception:  # noqa: BLE001 - the watcher must survive anything; the set stays
                    log.exception("rule watcher failed; will retry")

        self._thread = threading.Thread(target=run, name="rules-watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
