"""Console login, sessions and CSRF: signed cookies, no server-side session store (replicas share nothing).

* Login: a token (full access), a read-only token, or a user name with a PBKDF2 password hash
  (``python -m ticketpager.console.auth`` prints one). Compared in constant time.
* Session: a cookie ``tp_console`` holding ``who|role|expiry|csrf`` and an HMAC-SHA256 of it, HttpOnly,
  SameSite=Lax, Secure when the request came over https. The key is ``console.session_secret``, or derived
  from the configured credentials (changing a token logs everyone out).
* CSRF: each session carries a random token; every POST form sends it back (``csrf`` field) or gets 403.
  The login form uses a double-submit cookie (``tp_console_login``) since there is no session yet.
"""

from __future__ import annotations

import base64
import getpass
import hashlib
import hmac
import secrets
import sys
import time
from dataclasses import dataclass

from ticketpager.settings import ConsoleSettings

COOKIE = "tp_console"
LOGIN_COOKIE = "tp_console_login"
ADMIN = "admin"
READONLY = "readonly"
#: OWASP's 2023 recommendation for PBKDF2-HMAC-SHA256
#: (https://cheatsheetseries.owasp.org/cheatsheets/Password_Storage_Cheat_Sheet.html#pbkdf2)
PBKDF2_ITERATIONS = 600_000


def hash_password(password: str, *, iterations: int = PBKDF2_ITERATIONS, salt: bytes | None = None) -> str:
    """``pbkdf2_sha256$<iterations>$<salt>$<hash>`` (base64), the format of ``console.password_hash``."""
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    return f"pbkdf2_sha256${iterations}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, iterations, salt, digest = stored.split("$")
        if scheme != "pbkdf2_sha256":
            return False
        got = hashlib.pbkdf2_hmac("sha256", password.encode(), _unb64(salt), int(iterations))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, _unb64(digest))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class Session:
    who: str
    role: str
    expires: int
    csrf: str

    @property
    def can_act(self) -> bool:
        return self.role == ADMIN


class Auth:
    """Checks credentials and signs / reads session cookies for one console configuration."""

    def __init__(self, settings: ConsoleSettings) -> None:
        self.settings = settings
        configured = settings.session_secret.get_secret_value()
        if not configured:
            material = "\0".join(
                (
                    settings.token.get_secret_value(),
                    settings.readonly_token.get_secret_value(),
                    settings.username,
                    settings.password_hash.get_secret_value(),
                )
            )
            configured = hashlib.sha256(b"ticketpager-console-session\0" + material.encode()).hexdigest()
        self._key = configured.encode()

    def login(self, token: str, username: str, password: str) -> tuple[str, str] | None:
        """(who, role) for valid credentials, else None. Every comparison runs, in constant time."""
        s = self.settings
        if token:
            full = s.token.get_secret_value()
            read = s.readonly_token.get_secret_value()
            if full and hmac.compare_digest(token.encode(), full.encode()):
                return "token", ADMIN
            if read and hmac.compare_digest(token.encode(), read.encode()):
                return "read-only token", READONLY
            return None
        if username and s.username and s.password_hash.get_secret_value():
            same_user = hmac.compare_digest(username.encode(), s.username.encode())
            if verify_password(password, s.password_hash.get_secret_value()) and same_user:
                return s.username, READONLY if s.user_readonly else ADMIN
        return None

    def issue(self, who: str, role: str, now: float | None = None) -> str:
        expires = int((now if now is not None else time.time()) + self.settings.session_hours * 3600)
        fields = (_b64(who.encode()), role, str(expires), secrets.token_urlsafe(24), self._grant(who, role))
        payload = "|".join(fields)
        return f"{payload}.{self._sign(payload)}"

    def _grant(self, who: str, role: str) -> str:
        """What the session was granted on, in a digest: the credential that logged in and the role it gave. A
        session is good only while they still hold: a token or password changed, or the user made read-only,
        ends every session they gave at its next request, whether or not a session secret is configured."""
        s = self.settings
        if who == "token":
            material = s.token.get_secret_value()
        elif who == "read-only token":
            material = s.readonly_token.get_secret_value()
        else:
            user_role = READONLY if s.user_readonly else ADMIN
            material = f"{s.username}\0{s.password_hash.get_secret_value()}\0{user_role}"
        digest = hmac.new(self._key, f"grant\0{who}\0{role}\0{material}".encode(), hashlib.sha256).digest()
        return _b64(digest[:16])

    def read(self, cookie: str | None, now: float | None = None) -> Session | None:
        if not cookie or "." not in cookie:
            return None
        payload, _, signature = cookie.rpartition(".")
        if not hmac.compare_digest(signature.encode(), self._sign(payload).encode()):
            return None
        try:
            who, role, expires, csrf, grant = payload.split("|")
            session = Session(_unb64(who).decode(), role, int(expires), csrf)
        except ValueError:  # a cookie of an older version (no grant) too: log in again
            return None
        if session.expires < (now if now is not None else time.time()) or role not in (ADMIN, READONLY):
            return None
        if not hmac.compare_digest(grant.encode(), self._grant(session.who, role).encode()):
            return None  # the credential or the role it gave changed since the login
        return session

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self._key, payload.encode(), hashlib.sha256).digest())


def csrf_ok(expected: str, given: object) -> bool:
    return isinstance(given, str) and bool(expected) and hmac.compare_digest(given.encode(), expected.encode())


def main() -> int:
    """``python -m ticketpager.console.auth``: read a password (twice) and print its hash for the settings."""
    first = getpass.getpass("password: ") if sys.stdin.isatty() else sys.stdin.readline().rstrip("\n")
    if sys.stdin.isatty() and getpass.getpass("again: ") != first:
        print("the passwords differ", file=sys.stderr)
        return 2
    if len(first) < 12:
        print("use at least 12 characters", file=sys.stderr)
        return 2
    print(hash_password(first))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
