"""The one redaction every stored, displayed or logged error text passes.

Vendors (and the proxies in front of them) may echo a request's credentials in an error body: a 401 with
the ``Authorization`` header, a 400 repeating the routing key. Those bodies become error messages that
are logged, stored in the database (poll errors, dead letters) and shown by ``/readyz``,
``/admin/status``, ``ticketpager status`` and ``deadletters list``. Each of those paths calls
:func:`redact` (the log filter in :mod:`kernel.logs` included), which removes

* every configured secret (API tokens, passwords, webhook secrets, bearer tokens, the metrics token,
  PagerDuty routing keys) in each encoding it travels in: raw, Basic auth (base64 of ``user:secret``,
  and any base64 run containing it, whatever its alignment), URL-encoded (hex in either case), JSON-
  (``\\/``, ``\\u003d``), ``repr``- and HTML-escaped (whichever characters the encoder escaped);
* anything shaped like a credential: an ``Authorization`` value, ``Bearer …`` / ``Basic …``,
  ``token=…``, ``api_key: …``, ``password=…``, the password in ``scheme://user:password@host``.

The process-wide :data:`SECRETS` learns the settings' secrets once (:func:`configure`) and the rules'
routing keys as they load; a call may add more (``extra``), e.g. the routing key of one outbox row.
"""

from __future__ import annotations

import base64
import html
import json
import re
import threading
from collections.abc import Iterable

from pydantic import BaseModel, SecretStr

REDACTED = "[redacted]"
MIN_SECRET_LENGTH = 4  # shorter values would redact ordinary words; no real credential is this short
MIN_BASE64_CORE = 6  # the base64 run that stands for a secret inside longer base64 must be this long
#: Vendors' error bodies are cut to a few hundred characters for storage: a secret is redacted before the
#: cut (a cut through it would leave a fragment no longer recognisable), over at most this much text.
MAX_SCAN_CHARS = 64 * 1024
#: Longer text is read this much further, then cut to MAX_SCAN_CHARS once redacted: a secret across the bound
#: is redacted whole instead of leaving its first characters (a secret of up to ~1,300 characters in its widest
#: escaping, 12 characters each; the 1,024-character values of the credential shapes).
SCAN_OVERLAP = 16 * 1024

# settings fields holding the user half of a Basic credential (Jira Cloud, Zendesk, ServiceNow)
_USER_FIELDS = frozenset({"email", "username"})
# Zendesk's API-token form of Basic auth is "{email}/token:{token}"
# https://developer.zendesk.com/api-reference/introduction/security-and-auth/#api-token
_USER_SUFFIXES = ("", "/token")

# Every repetition below is bounded, and no pattern backtracks over an unbounded run: vendor text is
# hostile input (64 KiB of "a.a.a…" or "a_a_a…" must not cost seconds).
_NOT_REDACTED_YET = r"(?!\[redacted\])"
_VALUE = _NOT_REDACTED_YET + r"(?!\*\*\*\*)[^\s\"'&,;}\])]{1,1024}"  # "****abcd" is masked on purpose (mask())
_AUTHORIZATION = re.compile(
    r"(?i)(\b(?:proxy-)?authorization\b[\"']?[ \t]{0,16}[:=][ \t]{0,16}[\"']?)"
    r"(?:(basic|bearer|token|digest|negotiate|ssws|apikey)[ \t]{1,16})?+" + _VALUE
)
_SCHEME_TOKEN = re.compile(r"\b(?i:(bearer|basic))[ \t]{1,16}(" + _NOT_REDACTED_YET + r"[A-Za-z0-9._~+/-]{8,4096}=*)")
_KEY_VALUE = re.compile(
    r"(?i)((?:\b|(?<=[_-]))"  # api_token, X-Api-Key, client_secret: the key may end a longer name
    r"(?:api[ _-]?key|api[ _-]?token|token|password|passwd|pwd|secret|"
    r"routing[ _-]?key|integration[ _-]?key|access[ _-]?key)"
    r"\b[\"']?[ \t]{0,16}[:=][ \t]{0,16}[\"']?)" + _VALUE
)
_URL_PASSWORD = re.compile(
    r"(?i)(\b[a-z][a-z0-9+.-]{0,31}://[^\s:/@\"']{1,256}:)" + _NOT_REDACTED_YET + r"[^\s/@\"']{1,1024}@"
)
# the credential shapes above all contain one of these: texts without any skip the four patterns
_HINTS = ("auth", "bearer", "basic", "token", "key", "pass", "pwd", "secret", "://")  # lower case


def _credential_shaped(token: str) -> bool:
    """``Basic authentication.`` is prose; ``Basic dXNlcjpwdw==`` is a credential: a digit or a symbol of
    base64 / token alphabets (not ``.`` or ``-``, which end and join words), or too long for a word."""
    return len(token) >= 24 or any(c.isdigit() or c in "+/=_~" for c in token)


def _base64_cores(secret: bytes) -> set[str]:
    """The base64 characters that stand for ``secret`` alone, at each of the three alignments it can have
    inside a longer base64 string (``user:secret`` in a Basic header): whatever precedes or follows it."""
    cores = set()
    n = len(secret)
    for shift in range(3):
        encoded = base64.b64encode(b"\0" * shift + secret).decode()
        start = -(-8 * shift // 6)  # the first character made of secret bits only
        end = (8 * (shift + n)) // 6  # one past the last such character
        core = encoded[start:end]
        if len(core) >= MIN_BASE64_CORE:
            cores.add(core)
            cores.add(core.replace("+", "-").replace("/", "_"))  # the URL-safe alphabet
    return cores


def _hex(value: int, width: int = 1) -> str:
    """``value`` in hex as a pattern matching either case of its digits (``%2f`` and ``%2F``)."""
    return "".join(f"[{d}{d.upper()}]" if d.isalpha() else d for d in f"{value:0{width}x}")


def _percent(char: str) -> str:
    """``char`` percent-encoded (RFC 3986 §2.1: UTF-8 bytes, hex in either case)."""
    return "".join(f"%{_hex(byte, 2)}" for byte in char.encode())


def _url_forms(char: str) -> set[str]:
    """Raw or percent-encoded (``+`` for a space in a form): encoders differ in what they leave raw."""
    return {re.escape(char), _percent(char)} | ({r"\+"} if char == " " else set())


def _json_forms(char: str) -> set[str]:
    """In a JSON string (RFC 8259 §7): raw unless JSON must escape it, ``\\uXXXX`` (Gson, Go and Rails
    escape ``<>&='`` so), the short escapes, ``\\/`` (PHP). Never a raw backslash: no two ways to split."""
    units = char.encode("utf-16-be")
    forms = {"".join(rf"\\u{_hex(int.from_bytes(units[i : i + 2]), 4)}" for i in range(0, len(units), 2))}
    forms.add(re.escape(json.dumps(char, ensure_ascii=False)[1:-1]))
    if char == "/":
        forms.add(re.escape("\\/"))
    return forms


def _html_forms(char: str) -> set[str]:
    """In an HTML page: raw, or a character reference (decimal, hex in either case, or named)."""
    forms = {re.escape(char), f"&#0{{0,8}}{ord(char)};", f"&#[xX]0{{0,8}}{_hex(ord(char))};"}
    forms.add(re.escape(html.escape(char)))
    return forms | ({"&apos;"} if char == "'" else set())


# One encoding per echo: a character may be written either way within an encoding, never across two (so no
# character has two forms of which one is the other's start, like a raw backslash and JSON's "\\": hostile
# text with a run of them would be split 2^n ways).
_ENCODINGS = (_url_forms, _json_forms, _html_forms)


def text_pattern(secret: str) -> str:
    """A pattern for ``secret`` written in text: raw, URL-encoded (hex in either case), JSON-escaped or
    HTML-escaped, any of its characters escaped or not. ASCII letters and digits match as they are."""

    def one(forms: set[str]) -> str:
        if len(forms) == 1:
            return next(iter(forms))
        return "(?:" + "|".join(sorted(forms, key=lambda f: (-len(f), f))) + ")"

    written = {
        "".join(char if char.isascii() and char.isalnum() else one(encoding(char)) for char in secret)
        for encoding in _ENCODINGS
    }
    return one(written)


def variants(secret: str, users: Iterable[str] = ()) -> set[str]:
    """The forms of ``secret`` that :func:`text_pattern` does not cover: Basic auth with each known user,
    base64 at any alignment, and ``repr``'s control character escapes."""
    if len(secret) < MIN_SECRET_LENGTH:
        return set()
    found = {repr(secret)[1:-1]}  # e.g. "\\x7f": repr escapes some control characters as JSON does not
    raw = secret.encode()
    for user in users:
        for suffix in _USER_SUFFIXES:
            found.add(base64.b64encode(f"{user}{suffix}:{secret}".encode()).decode())
    found |= _base64_cores(raw)
    return {v for v in found if len(v) >= MIN_SECRET_LENGTH}


def credentials(settings: BaseModel) -> tuple[set[str], set[str]]:
    """(every non-empty SecretStr value, every user name / e-mail) anywhere in a settings tree."""
    secrets: set[str] = set()
    users: set[str] = set()

    def walk(value: object, name: str = "") -> None:
        if isinstance(value, SecretStr):
            if len(value.get_secret_value()) >= MIN_SECRET_LENGTH:
                secrets.add(value.get_secret_value())
        elif isinstance(value, BaseModel):
            for field in type(value).model_fields:
                walk(getattr(value, field), field)
        elif isinstance(value, list | tuple | set):
            for item in value:
                walk(item, name)
        elif isinstance(value, dict):
            for item in value.values():
                walk(item, name)
        elif isinstance(value, str) and name in _USER_FIELDS and value:
            users.add(value)

    walk(settings)
    return secrets, users


class Redactor:
    """Known secrets (in all their encodings) and credential-shaped text, replaced by ``[redacted]``.

    Thread-safe: :meth:`add` swaps in a new compiled pattern; :meth:`redact` reads whichever is current.
    """

    def __init__(self, secrets: Iterable[str] = (), users: Iterable[str] = ()) -> None:
        self._lock = threading.Lock()
        self._secrets: frozenset[str] = frozenset()
        self._users: frozenset[str] = frozenset()
        self._pattern: re.Pattern[str] | None = None
        self.add(secrets, users)

    def add(self, secrets: Iterable[str] = (), users: Iterable[str] = ()) -> None:
        """Learn more secrets (and the users they pair with in Basic auth); cheap when nothing is new."""
        new_secrets = {s for s in secrets if s and len(s) >= MIN_SECRET_LENGTH}
        new_users = {u for u in users if u}
        if new_secrets <= self._secrets and new_users <= self._users:
            return
        with self._lock:
            self._secrets |= new_secrets
            self._users |= new_users
            self._pattern = _compile(self._secrets, self._users)

    def __call__(self, text: str, extra: Iterable[str] = ()) -> str:
        return self.redact(text, extra)

    def redact(self, text: str, extra: Iterable[str] = ()) -> str:
        """``text`` without any secret or credential-shaped value, cut to :data:`MAX_SCAN_CHARS` (once redacted:
        see :data:`SCAN_OVERLAP`)."""
        if not text:
            return text
        if len(text) > MAX_SCAN_CHARS:
            return self._redact(text[: MAX_SCAN_CHARS + SCAN_OVERLAP], extra)[:MAX_SCAN_CHARS]
        return self._redact(text, extra)

    def _redact(self, text: str, extra: Iterable[str]) -> str:
        pattern = self._pattern
        if pattern is not None:
            text = pattern.sub(REDACTED, text)
        more = {s for s in extra if s and len(s) >= MIN_SECRET_LENGTH} - self._secrets
        if more:
            extra_pattern = _compile(more, self._users)
            if extra_pattern is not None:
                text = extra_pattern.sub(REDACTED, text)
        lower = text.lower()
        if not any(hint in lower for hint in _HINTS):  # much cheaper than the patterns (log lines)
            return text
        text = _AUTHORIZATION.sub(_authorization, text)
        text = _SCHEME_TOKEN.sub(_scheme_token, text)
        text = _KEY_VALUE.sub(lambda m: m.group(1) + REDACTED, text)
        return _URL_PASSWORD.sub(lambda m: m.group(1) + REDACTED + "@", text)


def _compile(secrets: Iterable[str], users: Iterable[str]) -> re.Pattern[str] | None:
    users = tuple(users)
    secrets = sorted({s for s in secrets if len(s) >= MIN_SECRET_LENGTH}, key=lambda s: (-len(s), s))
    forms: set[str] = set()
    for secret in secrets:
        forms |= variants(secret, users)
    if not secrets:
        return None
    texts = [text_pattern(s) for s in secrets]
    written = re.compile("|".join(texts))
    forms = {f for f in forms if not written.fullmatch(f)}  # an alternative less to try at every position
    # longest first: a whole Basic credential goes before the base64 core inside it
    literals = [re.escape(f) for f in sorted(forms, key=lambda f: (-len(f), f))]
    return re.compile("|".join(literals + texts))


def _authorization(match: re.Match[str]) -> str:
    scheme = match.group(2)
    return match.group(1) + (f"{scheme} " if scheme else "") + REDACTED


def _scheme_token(match: re.Match[str]) -> str:
    if not _credential_shaped(match.group(2)):
        return match.group(0)
    return f"{match.group(1)} {REDACTED}"


#: The process-wide redactor: the log filter, the store and every display path use it.
SECRETS = Redactor()


def mask(secret: str) -> str:
    """Show only the last 4 characters of a key (a routing key: enough to tell services apart)."""
    return "****" + secret[-4:] if len(secret) > 8 else "****"


def redact(text: str, *extra: str) -> str:
    """``text`` with every known secret (and ``extra`` ones, e.g. an outbox row's routing key) and anything
    credential-shaped replaced by ``[redacted]``."""
    return SECRETS.redact(text, extra)


def configure(settings: BaseModel) -> None:
    """Teach :data:`SECRETS` every secret (and Basic auth user) of a settings tree."""
    secrets, users = credentials(settings)
    SECRETS.add(secrets, users)
