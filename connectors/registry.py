"""The registry of external systems: each one is registered once, here or by a plug-in, and everything that
needs the list of systems reads it from here.

A :class:`System` names the system (``jira``: the webhook path ``/webhooks/jira``, the settings section
``TICKETPAGER_JIRA__*``, a rule's ``source: jira``, ``poll --source jira``), its settings model, the
``ticket.attributes`` its connector fills (the field vocabulary of its rules) and its connector class, which
verifies and parses webhooks, polls, and writes notes back (see :class:`connectors.base.Connector`).

Readers: the settings tree and its README table (``ticketpager/settings.py``, ``ticketpager/settings_doc.py``),
the CLI's ``--source`` choices, rule validation and the rules JSON Schema (through
:data:`kernel.fields.SOURCE_ATTRIBUTES`, which :func:`register` fills), the HTTP app's webhook routes and the
service's pollers and readiness (through :data:`connectors.CONNECTORS`).

Adding a system: a package with its settings model, attributes and connector, plus ONE registration line:
a line in :data:`BUILTIN` for a system shipped with ticketpager, or, from a separate package, an entry point
in the ``ticketpager.systems`` group naming its :class:`System`::

    [project.entry-points."ticketpager.systems"]
    acmedesk = "acmedesk_ticketpager:SYSTEM"

Entry points are loaded on the first question to the registry (:func:`systems`, :func:`names`, :func:`get`),
which the application asks when it builds the settings tree at start-up (a plug-in module may itself import
``connectors``: loading them on import would be circular); :func:`register` refuses a system once the
settings tree is built (its settings could not be read any more).
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import TYPE_CHECKING

from connectors import jira_normalize, servicenow_normalize, zendesk_normalize
from connectors.settings import ConnectorSettings, JiraSettings, ServiceNowSettings, ZendeskSettings
from kernel.errors import ConfigError
from kernel.fields import RawPayload, declare_source

if TYPE_CHECKING:
    from connectors.base import Connector

ENTRY_POINT_GROUP = "ticketpager.systems"
#: a name is a settings section (TICKETPAGER_<NAME>__…), a URL path segment and a rule's source
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
RESERVED_NAMES = frozenset({"any", "unknown"})  # a rule's "source: any"; the webhook metric's unknown source


@dataclass(frozen=True, slots=True)
class System:
    """One external ticketing system, as everything else in ticketpager sees it."""

    name: str
    settings: type[ConnectorSettings]  # its TICKETPAGER_<NAME>__* section
    attributes: frozenset[str]  # the ticket.attributes its connector fills (rules may read exactly these)
    connector: str  # "module:Class" of its Connector subclass, imported on first use (vendor clients are heavy)
    raw: RawPayload | None = None  # what ticket.raw holds at its top level (None: rules' dotted paths not checked)

    def connector_class(self) -> type[Connector]:
        """The connector class (imported now)."""
        module_name, _, class_name = self.connector.partition(":")
        cls: type[Connector] = getattr(importlib.import_module(module_name), class_name)
        return cls


BUILTIN: tuple[System, ...] = (
    System(
        "jira", JiraSettings, jira_normalize.ATTRIBUTES, "connectors.jira:JiraConnector", jira_normalize.RAW_PAYLOAD
    ),
    System(
        "zendesk",
        ZendeskSettings,
        zendesk_normalize.ATTRIBUTES,
        "connectors.zendesk:ZendeskConnector",
        zendesk_normalize.RAW_PAYLOAD,
    ),
    System(
        "servicenow",
        ServiceNowSettings,
        servicenow_normalize.ATTRIBUTES,
        "connectors.servicenow:ServiceNowConnector",
        servicenow_normalize.RAW_PAYLOAD,
    ),
)

_SYSTEMS: dict[str, System] = {}
_frozen = False
_plugins = "not loaded"  # → "loading" → "loaded"


def register(system: System) -> System:
    """Add ``system`` to the registry (and its attributes to the rules' field vocabulary)."""
    if not NAME_PATTERN.fullmatch(system.name) or system.name in RESERVED_NAMES:
        raise ConfigError(f"system name {system.name!r} is not usable: lowercase letters, digits and _, not 'any'")
    if _frozen:
        raise ConfigError(
            f"system {system.name!r} registered after the settings tree was built: register it through the "
            f"{ENTRY_POINT_GROUP!r} entry point group instead"
        )
    if system.name in _SYSTEMS:
        raise ConfigError(f"system {system.name!r} is registered twice")
    if not (isinstance(system.settings, type) and issubclass(system.settings, ConnectorSettings)):
        raise ConfigError(f"system {system.name!r}: its settings model must subclass ConnectorSettings")
    _SYSTEMS[system.name] = system
    declare_source(system.name, system.attributes, system.raw)
    return system


def freeze() -> None:
    """Called once the settings tree is built from the registry: later registrations would have no settings."""
    global _frozen
    _frozen = True


def systems() -> tuple[System, ...]:
    """Every registered system, built-ins first, in registration order."""
    _load_plugins()
    return tuple(_SYSTEMS.values())


def names() -> tuple[str, ...]:
    """The registered systems' names (the valid ``--source`` values)."""
    return tuple(system.name for system in systems())


def get(name: str) -> System:
    """The system called ``name``; ``KeyError`` for an unknown one."""
    _load_plugins()
    return _SYSTEMS[name]


def _load_plugins() -> None:
    """Register the systems of the ``ticketpager.systems`` entry points, once."""
    global _plugins
    if _plugins != "not loaded":
        return
    _plugins = "loading"
    for point in entry_points(group=ENTRY_POINT_GROUP):
        try:
            system = point.load()
        except Exception as exc:  # a broken plug-in must say which one, not fail somewhere later
            raise ConfigError(f"system plug-in {point.name!r} ({point.value}) does not load: {exc}") from exc
        if not isinstance(system, System) or system.name != point.name:
            raise ConfigError(
                f"system plug-in {point.name!r} ({point.value}) is not a connectors.registry.System "
                f"named {point.name!r}"
            )
        register(system)
    _plugins = "loaded"


for _builtin in BUILTIN:
    register(_builtin)

__all__ = ["BUILTIN", "ENTRY_POINT_GROUP", "System", "freeze", "get", "names", "register", "systems"]
