"""CPU cost of the HTTP edge limits (ticketpager/edge.py) per request, isolated from everything else.

Run from the repository root:  python -m bench.bench_edge [--requests 20000] [--rounds 5]

One keep-alive connection, in process, no sockets: a signed-webhook-sized request (3 KB body) is fed to the
protocol as one read, the ASGI app reads the body and answers 202, the event loop runs the task; repeated
``--requests`` times. Measured for uvicorn's own httptools protocol (the baseline, in the same run) and for
:class:`ticketpager.edge.EdgeProtocol`, alternating, best round of each (CPU time of this process).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from ticketpager import edge
from ticketpager.settings import HttpSettings

BODY = b'{"issue": {"fields": {"summary": "' + b"x" * 3000 + b'"}}}'
REQUEST = (
    b"POST /webhooks/jira HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nContent-Type: application/json\r\n"
    b"X-Hub-Signature: sha256=" + b"0" * 64 + b"\r\nX-Atlassian-Webhook-Identifier: bench-1\r\n"
    b"Content-Length: %d\r\n\r\n" % len(BODY)
) + BODY


async def app(scope: Any, receive: Any, send: Any) -> None:
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 202, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"{}"})


class Transport(asyncio.Transport):
    """Just enough of a socket transport: writes are counted and dropped."""

    def __init__(self) -> None:
        super().__init__()
        self.written = 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8080), "peername": ("127.0.0.1", 40000)}.get(name, default)

    def write(self, data: Any) -> None:
        self.written += len(data)

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def can_write_eof(self) -> bool:
        return True


def run(protocol: type[asyncio.Protocol], requests: int) -> float:
    """CPU microseconds per request through ``protocol``."""
    loop = asyncio.new_event_loop()
    try:
        config = Config(app=app, http=protocol, lifespan="off", log_config=None)
        config.load()
        proto: Any = protocol(config=config, server_state=ServerState(), app_state={}, _loop=loop)  # type: ignore[call-arg]
        transport = Transport()
        proto.connection_made(transport)

        async def drive() -> None:
            for _ in range(requests):
                proto.data_received(REQUEST)
                await asyncio.sleep(0)  # the app's task reads the body and answers
                await asyncio.sleep(0)

        started = time.process_time()
        loop.run_until_complete(drive())
        elapsed = time.process_time() - started
        assert transport.written > requests * 10, "every request was answered"
        proto.connection_lost(None)
        return elapsed * 1e6 / requests
    finally:
        loop.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    guarded = edge.protocol(HttpSettings())
    plain: list[float] = []
    ours: list[float] = []
    for _ in range(args.rounds):
        plain.append(run(HttpToolsProtocol, args.requests))
        ours.append(run(guarded, args.requests))
    print(f"{args.requests} requests per round, {args.rounds} rounds, CPU µs per request (protocol + app + loop)")
    print(f"uvicorn httptools protocol: {', '.join(f'{v:.2f}' for v in plain)}  best {min(plain):.2f}")
    print(f"with the edge limits:       {', '.join(f'{v:.2f}' for v in ours)}  best {min(ours):.2f}")
    print(f"cost of the edge limits: {min(ours) - min(plain):+.2f} µs per request ({min(ours) / min(plain):.3f}×)")


if __name__ == "__main__":
    main()
