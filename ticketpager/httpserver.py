"""uvicorn's server with a one-second main-loop tick instead of ten a second (issue 19: the idle cost).

uvicorn wakes its main loop every 0.1 s to refresh the ``Date`` header (it changes once a second) and to see
whether a signal asked it to stop: 10 wake-ups a second of the event loop, the largest share of an idle
``serve``'s CPU once the workers stopped polling. Here the loop sleeps a second at a time and a stop signal
wakes it at once, so a SIGTERM is acted on as fast as before and the ``Date`` header is refreshed as often.
"""

from __future__ import annotations

import asyncio
import contextlib
from types import FrameType

import uvicorn

#: how often the idle main loop wakes (uvicorn's own: 0.1 s); the Date header is refreshed on each tick
TICK_SECONDS = 1.0


class Server(uvicorn.Server):
    tick_seconds = TICK_SECONDS

    async def main_loop(self) -> None:
        self._stop_requested = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        counter = 0
        should_exit = await self.on_tick(counter)
        while not should_exit:
            counter = (counter + 10) % 864_000  # uvicorn's on_tick refreshes the Date header when counter % 10 == 0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop_requested.wait(), self.tick_seconds)
            should_exit = await self.on_tick(counter)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        loop = getattr(self, "_loop", None)
        if loop is not None and not loop.is_closed():  # wake the main loop now, not at its next tick
            loop.call_soon_threadsafe(self._stop_requested.set)
