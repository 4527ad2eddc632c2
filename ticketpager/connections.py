"""Named connections: any number of instances of each ticketing system (an MSP's Zendesk per client, Jira
Cloud next to Jira Data Center), each with its own URL, credentials, webhook secrets, poll settings, cursor
and lease.

Each registered system always has its *default connection*, named after it and configured by the
environment as before (``TICKETPAGER_ZENDESK__*`` is the connection ``zendesk``). More come from the
connections file (``TICKETPAGER_CONNECTIONS_FILE``, YAML)::

    connections:
      - name: acme-zendesk          # lowercase letters, digits and '-': a URL segment and a lease name
        system: zendesk             # a system of connectors/registry.py
        subdomain: acme             # then that system's settings, the same fields as its environment section
        email: ops@acme.example
        api_token: ${ACME_ZENDESK_TOKEN}
        webhook_secrets: [${ACME_ZENDESK_WEBHOOK_SECRET}]

A value written ``${NAME}`` (the whole value) is read from the environment, else from the file ``NAME`` in
``TICKETPAGER_SECRETS_DIR``; unset or empty is an error naming the connection and the key, never a value.
Every problem is reported as ``file:line:col`` (the rule files' loader, :mod:`rules.loader`), all at once.
A connection in the file is enabled unless it says ``enabled: false``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from connectors import registry
from connectors.servicenow_normalize import build_state_map
from connectors.settings import ConnectorSettings, ServiceNowSettings, ZendeskSettings
from kernel import redact
from kernel.errors import ConfigError
from kernel.fields import ConnectionVocabulary, declare_connections
from kernel.model import StatusCategory
from rules.loader import Pos, RuleFileError, RuleFileErrors, YList, YMap, parse_text, read_file
from rules.operators import did_you_mean
from ticketpager.secretfiles import EnvWithSecretFiles
from ticketpager.settings import Settings

ENV_NAME = "TICKETPAGER_CONNECTIONS_FILE"
#: a connection's name is a URL path segment (/webhooks/zendesk/acme-zendesk), a lease name
#: (poll:acme-zendesk), a cursor key and a metrics label: short, lowercase, no '/' or ':'
NAME = re.compile(r"[a-z][a-z0-9-]{0,39}")
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
TOP_KEYS = ("version", "connections")
IDENTITY_KEYS = ("name", "system")


@dataclass(frozen=True, slots=True)
class Connection:
    """One instance of a ticketing system: its name, its system and that system's settings."""

    name: str
    system: str
    settings: ConnectorSettings

    @property
    def is_default(self) -> bool:
        """The connection the environment's ``TICKETPAGER_<SYSTEM>__*`` section configures."""
        return self.name == self.system

    def __repr__(self) -> str:  # never the settings (secrets)
        return f"<Connection {self.name} ({self.system})>"


def default_connections(settings: Settings) -> dict[str, Connection]:
    """One connection per registered system, named after it, from the environment's sections."""
    return {system: Connection(system, system, settings.connector(system)) for system in registry.names()}


def load_connections(settings: Settings, environ: Mapping[str, str] = os.environ) -> dict[str, Connection]:
    """The default connections, then those of ``settings.connections_file`` (if set), in file order."""
    out = default_connections(settings)
    if settings.connections_file is not None:
        env: Mapping[str, str] = environ
        if settings.secrets_dir is not None:
            env = EnvWithSecretFiles(settings.secrets_dir, environ)
        out.update(load_file(settings.connections_file, env))
    return out


def declare(connections: Mapping[str, Connection]) -> None:
    """Tell rule validation which connections exist (``connection:`` conditions are checked against them)
    and what each one's settings name (a rule naming connections is checked against their vocabulary),
    and the redaction filter their secrets."""
    declare_connections(
        {c.name: c.system for c in connections.values() if not c.is_default},
        {c.name: vocabulary(c.settings) for c in connections.values()},
    )
    # one add for all of them: each add recompiles the pattern of every secret known so far, so one add per
    # connection took 58 s of start-up for 50 connections (docs/performance.md, "50 connections")
    secrets: set[str] = set()
    users: set[str] = set()
    for connection in connections.values():
        more, who = redact.credentials(connection.settings)
        secrets |= more
        users |= who
    redact.SECRETS.add(secrets, users)


def vocabulary(settings: ConnectorSettings) -> ConnectionVocabulary:
    """What a connection's settings say its tickets hold: a Zendesk's ``custom_field_names`` (the names
    ``custom.<name>`` can read; Jira's display names come from Jira at run time, so none are declared) and
    the status categories a ServiceNow's ``state_map`` leaves possible."""
    if isinstance(settings, ZendeskSettings):
        return ConnectionVocabulary(custom_field_names=frozenset(n for n in settings.custom_field_names.values() if n))
    if isinstance(settings, ServiceNowSettings) and settings.state_map:
        try:
            mapped = build_state_map(settings.state_map)
        except ConfigError:  # the connector reports it when it starts; validation knows nothing then
            return ConnectionVocabulary()
        return ConnectionVocabulary(status_categories=frozenset(c.value for c in mapped.values()) | ALWAYS_POSSIBLE)
    return ConnectionVocabulary()


#: what a ServiceNow ticket can be whatever its state_map says: a state the map lacks falls back to the
#: record's ``active`` flag (in_progress or done), a delete event is deleted (connectors/servicenow*.py)
ALWAYS_POSSIBLE = frozenset({StatusCategory.IN_PROGRESS.value, StatusCategory.DONE.value, StatusCategory.DELETED.value})


def load_file(path: Path, env: Mapping[str, str]) -> dict[str, Connection]:
    """The connections of one file; :class:`rules.loader.RuleFileErrors` (``file:line:col``) if any is wrong."""
    text, errors = read_file(path)
    if text is None:
        raise RuleFileErrors(errors)
    data, errors = parse_text(text, str(path))
    if errors:
        raise RuleFileErrors(errors)
    reader = _Reader(str(path), env)
    found = reader.file(data)
    if reader.errors:
        raise RuleFileErrors(reader.errors)
    return found


class _Reader:
    def __init__(self, path: str, env: Mapping[str, str]) -> None:
        self.path = path
        self.env = env
        self.errors: list[RuleFileError] = []

    def err(self, pos: Pos, message: str) -> None:
        self.errors.append(RuleFileError.at(pos, message))

    def file(self, data: Any) -> dict[str, Connection]:
        top = Pos(self.path, 1, 1)
        if not isinstance(data, YMap):
            self.err(top, "expected a mapping with 'connections:' (a list of connections)")
            return {}
        for key in data:
            if key not in TOP_KEYS:
                self.err(
                    data.key_pos[key],
                    f"unknown key '{key}'{did_you_mean(str(key), TOP_KEYS)} (allowed: {', '.join(TOP_KEYS)})",
                )
        if "version" in data and data["version"] != 1:
            self.err(data.val_pos["version"], "version must be 1")
        items = data.get("connections")
        if not isinstance(items, YList):
            self.err(data.val_pos.get("connections", data.pos), "'connections' must be a list of connections")
            return {}
        found: dict[str, Connection] = {}
        first_at: dict[str, Pos] = {}
        for item, pos in zip(items, items.item_pos, strict=True):
            connection = self.connection(item, pos)
            if connection is None:
                continue
            if connection.name in first_at:
                where = first_at[connection.name]
                self.err(
                    item.val_pos["name"],
                    f"connection '{connection.name}' is defined twice (first at line {where.line})",
                )
                continue
            first_at[connection.name] = item.val_pos["name"]
            found[connection.name] = connection
        return found

    def connection(self, item: Any, pos: Pos) -> Connection | None:
        if not isinstance(item, YMap):
            self.err(pos, "a connection is a mapping: name, system and that system's settings")
            return None
        name, system = self.identity(item)
        if name is None or system is None:
            return None
        model = registry.get(system).settings
        allowed = (*IDENTITY_KEYS, *model.model_fields)
        values: dict[str, Any] = {"enabled": True}
        ok = True
        for key, value in item.items():
            if key in IDENTITY_KEYS:
                continue
            if key not in model.model_fields:
                self.err(
                    item.key_pos[key],
                    f"connection '{name}': unknown {system} setting '{key}'{did_you_mean(str(key), allowed)}",
                )
                ok = False
                continue
            resolved = self.resolve(value, item.val_pos[key], name, key)
            if resolved is _MISSING:
                ok = False
                continue
            values[key] = resolved
        if not ok:
            return None
        try:
            settings = model.model_validate(values)
        except ValidationError as exc:
            for problem in exc.errors(include_input=False, include_url=False):
                loc = problem["loc"]
                key = str(loc[0]) if loc else ""
                where = item.val_pos.get(key, item.pos)
                self.err(where, f"connection '{name}': {key}: {problem['msg']}")  # never the value (secrets)
            return None
        return Connection(name, system, settings)

    def identity(self, item: YMap) -> tuple[str | None, str | None]:
        name = item.get("name")
        system = item.get("system")
        ok_name: str | None = None
        ok_system: str | None = None
        if not isinstance(name, str):
            self.err(item.val_pos.get("name", item.pos), "a connection needs a name (e.g. acme-zendesk)")
        elif not NAME.fullmatch(name):
            self.err(
                item.val_pos["name"],
                f"connection name '{name[:40]}' is not usable: lowercase letters, "
                "digits and '-', starting with a letter, at most 40 characters",
            )
        elif name in registry.names():
            self.err(
                item.val_pos["name"],
                f"connection name '{name}' is the default {name} connection (the "
                f"TICKETPAGER_{name.upper()}__* settings): choose another name",
            )
        else:
            ok_name = name
        systems = registry.names()
        if not isinstance(system, str):
            self.err(item.val_pos.get("system", item.pos), f"a connection needs a system ({' | '.join(systems)})")
        elif system not in systems:
            self.err(
                item.val_pos["system"],
                f"unknown system '{system[:40]}'{did_you_mean(system, systems)} (use {' | '.join(systems)})",
            )
        else:
            ok_system = system
        return ok_name, ok_system

    def resolve(self, value: Any, pos: Pos, name: str, key: str) -> Any:
        """``value`` with every ``${NAME}`` read from the environment / secret files (lists and maps too)."""
        if isinstance(value, YMap):
            out = {k: self.resolve(v, value.val_pos[k], name, f"{key}.{k}") for k, v in value.items()}
            return _MISSING if _MISSING in out.values() else out
        if isinstance(value, YList):
            items = [
                self.resolve(v, p, name, f"{key}[{i + 1}]")
                for i, (v, p) in enumerate(zip(value, value.item_pos, strict=True))
            ]
            return _MISSING if _MISSING in items else items
        if not isinstance(value, str) or "${" not in value:
            return value
        ref = _ENV_REF.fullmatch(value.strip())
        if ref is None:
            self.err(pos, f"connection '{name}': {key}: a reference must be the whole value: ${{NAME}}")
            return _MISSING
        variable = ref.group(1)
        try:
            resolved = self.env[variable]
        except KeyError:
            self.err(pos, f"connection '{name}': {key}: ${{{variable}}} is not set (environment or secrets dir)")
            return _MISSING
        if not resolved.strip():
            self.err(pos, f"connection '{name}': {key}: ${{{variable}}} is empty")
            return _MISSING
        return resolved.strip()


_MISSING: Any = object()

__all__ = ["ENV_NAME", "Connection", "declare", "default_connections", "load_connections", "load_file"]
