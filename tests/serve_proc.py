"""Run ``ticketpager`` as a real subprocess for crash and end-to-end tests: ``serve`` (:class:`Serve`) and
one-shot commands such as ``poll --once`` (:func:`run_cli`), in a clean environment (:func:`cli_env`)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLI = (sys.executable, "-m", "ticketpager.cli")  # the ticketpager command, from this checkout
#: variables of the caller's shell that would leak into a child's settings (zenpy reads ZENPY_*)
FOREIGN_PREFIXES = ("TICKETPAGER_", "ZENPY_")


def cli_env(tmp_path: Path, *, rules: Path, pagerduty_url: str, **variables: str) -> dict[str, str]:
    """The environment of an end-to-end ``ticketpager`` child: none of the caller's settings, this checkout
    importable, loopback never proxied, a fresh SQLite database in ``tmp_path``, ``rules`` and PagerDuty's
    events URL, plus ``variables`` (``TICKETPAGER_JIRA__URL``, routing keys the rules read, …)."""
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith(FOREIGN_PREFIXES)},
        "PYTHONPATH": str(ROOT),
        "NO_PROXY": "127.0.0.1,localhost",
        "TICKETPAGER_DATABASE_URL": f"sqlite:///{tmp_path / 'tp.db'}",
        "TICKETPAGER_RULES_PATH": str(rules),
        "TICKETPAGER_PAGERDUTY__EVENTS_URL": pagerduty_url,
        **variables,
    }


def run_cli(*args: str, env: dict[str, str], cwd: Path, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    """Run ``ticketpager <args>`` to completion (e.g. ``poll --once --source jira``)."""
    return subprocess.run([*CLI, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)  # noqa: S603


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Serve:
    def __init__(self, env: dict[str, str], port: int | None = None, args: tuple[str, ...] = ()) -> None:
        self.port = port or free_port()
        self.env = {**os.environ, **env, "TICKETPAGER_PORT": str(self.port)}
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> Serve:
        self.proc = subprocess.Popen(  # noqa: S603
            [*CLI, "serve", *self.args],
            env=self.env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve exited early:\n{self.output()}")
            try:
                urllib.request.urlopen(f"{self.url}/healthz", timeout=1)  # noqa: S310 - loopback
                return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("serve did not become healthy")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def post(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        req = urllib.request.Request(f"{self.url}{path}", data=body, method="POST",  # noqa: S310
                                     headers={"Content-Type": "application/json", **headers})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310
                return resp.status, resp.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.output()

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.output()
        return int(self.proc.returncode)

    def output(self) -> str:
        if self.proc is None or self.proc.stdout is None:
            return ""
        if self.proc.poll() is None:
            return ""
        if not hasattr(self, "_output"):
            self._output = self.proc.stdout.read().decode(errors="replace")
            self.proc.stdout.close()
        return self._output
