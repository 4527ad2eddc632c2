"""A console session lasts only while what it was granted on holds: a user made read-only, a password or a token
changed, ends the sessions they gave at their next request, even with a configured session secret (which keeps
every other session valid across restarts and replicas)."""

from __future__ import annotations

from starlette.testclient import TestClient

from kernel.clock import FakeClock
from tests.fakes.pagerduty_server import MockPagerDuty
from tests.harness import make_service
from ticketpager.app import build_app
from ticketpager.console.auth import ADMIN, READONLY, Auth, hash_password
from ticketpager.settings import ConsoleSettings

SECRET = "a-session-secret-shared-by-every-replica"
PASSWORD = "correct horse battery staple"
HASH = hash_password(PASSWORD, iterations=1000)


def _auth(**changes: object) -> Auth:
    base: dict[str, object] = {
        "enabled": True,
        "token": "admin-token-0123456789",
        "readonly_token": "readonly-token-0123456789",
        "username": "lead",
        "password_hash": HASH,
        "session_secret": SECRET,
    }
    return Auth(ConsoleSettings(**(base | changes)))  # type: ignore[arg-type]


def test_a_session_survives_a_restart_with_the_same_settings() -> None:
    cookie = _auth().issue("lead", ADMIN, now=1000.0)
    session = _auth().read(cookie, now=1001.0)  # another replica, or this one restarted
    assert session is not None and session.who == "lead" and session.role == ADMIN


def test_a_user_made_read_only_loses_the_admin_session_at_once() -> None:
    cookie = _auth().issue("lead", ADMIN, now=1000.0)
    assert _auth(user_readonly=True).read(cookie, now=1001.0) is None
    again = _auth(user_readonly=True).issue("lead", READONLY, now=1002.0)  # logging in again: read-only
    assert _auth(user_readonly=True).read(again, now=1003.0) is not None


def test_a_changed_password_or_token_ends_the_sessions_it_gave_and_only_those() -> None:
    user = _auth().issue("lead", ADMIN, now=1000.0)
    token = _auth().issue("token", ADMIN, now=1000.0)
    readonly = _auth().issue("read-only token", READONLY, now=1000.0)
    rehashed = _auth(password_hash=hash_password("a new passphrase, rotated", iterations=1000))
    assert rehashed.read(user, now=1001.0) is None
    assert rehashed.read(token, now=1001.0) is not None and rehashed.read(readonly, now=1001.0) is not None
    rotated = _auth(token="admin-token-rotated-98765")
    assert rotated.read(token, now=1001.0) is None
    assert rotated.read(user, now=1001.0) is not None and rotated.read(readonly, now=1001.0) is not None


def test_through_the_console_a_demoted_users_cookie_is_sent_to_the_login_page(
    db_url: str, rules_path: object, pd: MockPagerDuty, clock: FakeClock
) -> None:
    """The same through the HTTP app: the admin cookie of a user made read-only meanwhile gets the login page."""
    console = {"enabled": True, "username": "lead", "password_hash": HASH, "session_secret": SECRET}
    before = make_service(db_url, rules_path, pd.url, clock, console=console)  # type: ignore[arg-type]
    after = make_service(db_url, rules_path, pd.url, clock, console=console | {"user_readonly": True})  # type: ignore[arg-type]
    try:
        with TestClient(build_app(before), base_url="http://console.test", follow_redirects=False) as c:
            form = c.get("/console/login").text
            csrf = form.split('name="csrf" value="')[1].split('"')[0]
            answer = c.post("/console/login", data={"csrf": csrf, "username": "lead", "password": PASSWORD})
            assert answer.status_code == 303
            cookies = dict(c.cookies)
            assert c.get("/console/").status_code == 200
        with TestClient(build_app(after), base_url="http://console.test", follow_redirects=False) as c:
            c.cookies.update(cookies)
            answer = c.get("/console/")
            assert answer.status_code == 303 and "/console/login" in answer.headers["location"]
    finally:
        before.store.dispose()
        after.store.dispose()
