"""The admin console: server-rendered pages under ``/console`` (Starlette + Jinja2, no JavaScript).

Off unless ``TICKETPAGER_CONSOLE__ENABLED`` and a login is configured (:mod:`ticketpager.console.auth`).
Pages read through one read model (:mod:`sync.repos.console`); the only action that changes anything,
retrying dead letters, needs the full role, a CSRF token and a confirmation, and is written to the audit log
(:mod:`sync.repos.audit`) with who and when. See docs/console.md.
"""

from __future__ import annotations

from ticketpager.console.web import build_console

__all__ = ["build_console"]
