"""SIGTERM and SIGINT during ``serve``'s start-up: remembered, then handed to the HTTP server once it exists.

uvicorn installs its own handlers only when its server runs, after the migrations, the service's threads and the
app are set up. ``serve`` used to install no-op handlers just before (uvicorn re-raises a signal it handled against
the handlers it found, and the defaults would end the process before the workers stopped): a TERM in between went
to them and was lost, and the process ran on until a SIGKILL. Now the first thing ``serve`` does is install
:class:`StopSignals`, which records every TERM and INT and, once the server exists, sets its ``should_exit``: the
server then starts and stops at once, and the service stops its workers as after any other SIGTERM (exit 0).
Imports nothing heavy, so it is installed before uvicorn, Starlette and SQLAlchemy are imported.
"""

from __future__ import annotations

import signal
from types import FrameType
from typing import Protocol

#: the signals that stop ``serve`` (uvicorn's own ``HANDLED_SIGNALS`` on Unix)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class _Stoppable(Protocol):
    should_exit: bool


class StopSignals:
    """The process's TERM and INT handler from the start of ``serve`` until uvicorn's, and again after it (uvicorn
    restores it, then re-raises what it handled: recorded, nothing more)."""

    def __init__(self) -> None:
        self.received: list[int] = []
        self._server: _Stoppable | None = None

    def install(self) -> StopSignals:
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._handle)
        return self

    @property
    def requested(self) -> bool:
        return bool(self.received)

    def hand_to(self, server: _Stoppable) -> None:
        """From now on a stop signal sets ``server.should_exit``; one received already does so at once."""
        self._server = server
        if self.received:
            server.should_exit = True

    def _handle(self, sig: int, frame: FrameType | None) -> None:
        self.received.append(sig)
        if self._server is not None:
            self._server.should_exit = True
