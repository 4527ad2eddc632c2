"""``ticketpager serve`` on another HTTP protocol than ticketpager/edge.py's, for bench_ingest's before/after figures.

``BENCH_HTTP=httptools``: uvicorn's own httptools protocol, i.e. serve without the edge limits (the "before");
``BENCH_HTTP=h11``: uvicorn's h11 protocol with ``h11_max_incomplete_event_size`` (the header limit uvicorn
offers), the alternative weighed in docs/performance.md. Bench-only: serve itself has no such switch.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import uvicorn

from ticketpager import cli

VARIANT = os.environ.get("BENCH_HTTP", "httptools")
_config_init = uvicorn.Config.__init__


def _config(self: uvicorn.Config, *args: Any, **kwargs: Any) -> None:
    kwargs["http"] = VARIANT
    if VARIANT == "h11":
        kwargs["h11_max_incomplete_event_size"] = 65536
    _config_init(self, *args, **kwargs)


if __name__ == "__main__":
    uvicorn.Config.__init__ = _config  # type: ignore[method-assign]
    sys.exit(cli.main(["serve", *sys.argv[1:]]))
