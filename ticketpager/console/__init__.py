"""The admin console: server-rendered pages under ``/console`` (Starlette + Jinja2, no JavaScript).

Off unless ``TICKETPAGER_CONSOLE__ENABLED`` and a login is configured (:mod:`ticketpager.console.auth`).
Pages read through one read model (:mod:`sync.repos.console`); the actions that change anything (retrying dead
letters, adding or expiring a silence) need the full role and a CSRF token, and are written to the audit log
(:mod:`sync.repos.audit`) with who and when, in the same transaction. See docs/console.md.
"""

from __future__ import annotations

from ticketpager.console.web import build_console

__all__ = ["build_console"]
