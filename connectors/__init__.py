"""Connectors: one module per external system, each registered once in :mod:`connectors.registry`.
:data:`CONNECTORS` maps a registered source name to its class ("module:Class").

Classes are imported lazily (the vendor clients are heavy); use :func:`connector_class`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from connectors import registry

if TYPE_CHECKING:
    from connectors.base import Connector

#: source name -> "module:Class", read from the registry (built-ins, then plug-ins)
CONNECTORS: dict[str, str] = {system.name: system.connector for system in registry.systems()}

SOURCES = tuple(CONNECTORS)


def connector_class(source: str) -> type[Connector]:
    """The connector class for ``source``; ``KeyError`` for an unknown source."""
    return registry.get(source).connector_class()


__all__ = ["CONNECTORS", "SOURCES", "connector_class"]
