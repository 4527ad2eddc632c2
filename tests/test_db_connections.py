"""How ticketpager connects to PostgreSQL: the password as written, timeouts so a host that drops packets cannot hold
a worker, and the URL's own settings winning over ticketpager's defaults."""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Iterator

import pytest
from sqlalchemy import text

from sync.db import PG_CONNECTION_PARAMETERS, database_fault, failure_reason, make_engine


class FakePostgres:
    """A TCP server on 127.0.0.1 that speaks just enough of PostgreSQL's protocol: it reads the startup packet,
    then either asks for a cleartext password and records it, or (``silent``) never answers.
    https://www.postgresql.org/docs/current/protocol-message-formats.html"""

    def __init__(self, *, silent: bool = False) -> None:
        self.silent = silent
        self.passwords: list[str] = []
        self.connections = 0
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self._held: list[socket.socket] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self.connections += 1
            self._held.append(conn)
            if self.silent:
                continue  # the handshake done by the kernel, then nothing, as from a host behind a dropping firewall
            try:
                self._ask_password(conn)
            except OSError:
                pass

    def _ask_password(self, conn: socket.socket) -> None:
        (length,) = struct.unpack("!I", _read(conn, 4))
        (code,) = struct.unpack("!I", _read(conn, 4))
        if code == 80877103:  # SSLRequest: "no", then the real startup packet
            conn.sendall(b"N")
            (length,) = struct.unpack("!I", _read(conn, 4))
            _read(conn, 4)
        _read(conn, length - 8)
        conn.sendall(b"R" + struct.pack("!II", 8, 3))  # AuthenticationCleartextPassword
        kind = _read(conn, 1)
        (size,) = struct.unpack("!I", _read(conn, 4))
        body = _read(conn, size - 4)
        if kind == b"p":
            self.passwords.append(body.rstrip(b"\0").decode())
        fields = b"SFATAL\0C28P01\0Mpassword authentication failed\0\0"
        conn.sendall(b"E" + struct.pack("!I", len(fields) + 4) + fields)
        conn.close()

    def close(self) -> None:
        self._sock.close()
        for conn in self._held:
            conn.close()


def _read(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise OSError("closed")
        data += chunk
    return data


@pytest.fixture
def fake_pg() -> Iterator[FakePostgres]:
    server = FakePostgres()
    yield server
    server.close()


@pytest.fixture
def silent_pg() -> Iterator[FakePostgres]:
    server = FakePostgres(silent=True)
    yield server
    server.close()


@pytest.mark.parametrize("scheme", ["postgresql", "postgres", "postgresql+psycopg2", "postgresql+psycopg"])
def test_the_password_in_the_url_is_the_one_the_server_receives(fake_pg: FakePostgres, scheme: str) -> None:
    """Every spelling of a PostgreSQL URL an operator may paste sends the password as written (the driver is
    switched to psycopg 3 where the URL names another or none), and the error names neither it nor the URL's."""
    engine = make_engine(f"{scheme}://ticketpager:s3cret-Pa55@127.0.0.1:{fake_pg.port}/ticketpager?sslmode=disable")
    try:
        with pytest.raises(Exception) as failed:
            engine.connect()
        assert fake_pg.passwords == ["s3cret-Pa55"]
        assert database_fault(failed.value), "a refused login is the database's fault: work stays pending"
        assert "password authentication failed" in failure_reason(failed.value)
        assert "s3cret" not in str(failed.value) and "s3cret" not in repr(engine)
    finally:
        engine.dispose()


def test_a_host_that_never_answers_fails_the_connection_in_bounded_time(silent_pg: FakePostgres) -> None:
    """A database host that accepts and then says nothing (or drops every packet) fails a connection attempt after
    ``connect_timeout``, as a fault the worker retries, instead of psycopg's 130 s per address."""
    engine = make_engine(f"postgresql://ticketpager@127.0.0.1:{silent_pg.port}/ticketpager?connect_timeout=2")
    try:
        started = time.monotonic()
        with pytest.raises(Exception) as failed:
            engine.connect()
        waited = time.monotonic() - started
        assert silent_pg.connections == 1
        assert 1.5 <= waited < 8, f"waited {waited:.1f} s for a silent host"
        assert database_fault(failed.value)
        assert "timeout" in failure_reason(failed.value)
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_every_connection_carries_the_timeouts_unless_the_url_sets_them(postgres_url: str) -> None:
    """The timeouts ticketpager sets are on every session it opens, read back from libpq; a value in the URL's
    query wins over ticketpager's, so an operator can lengthen a timeout for a distant database."""

    def parameters(url: str) -> dict[str, str]:
        engine = make_engine(url)
        try:
            with engine.connect() as conn:
                assert conn.execute(text("SELECT 1")).scalar_one() == 1
                return dict(conn.connection.driver_connection.info.get_parameters())  # type: ignore[union-attr]
        finally:
            engine.dispose()

    default = parameters(postgres_url)
    for name, value in PG_CONNECTION_PARAMETERS.items():
        assert default.get(name) == str(value), name
    separator = "&" if "?" in postgres_url else "?"
    chosen = parameters(f"{postgres_url}{separator}connect_timeout=45&keepalives_idle=120")
    assert chosen["connect_timeout"] == "45" and chosen["keepalives_idle"] == "120"
    assert chosen["tcp_user_timeout"] == str(PG_CONNECTION_PARAMETERS["tcp_user_timeout"])
