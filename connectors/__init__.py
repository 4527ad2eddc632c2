"""Connectors: one module per external system, each registered once in :mod:`connectors.registry`.
:data:`CONNECTORS` maps a registered source name to its class ("module:Class").

Classes are imported lazily (the vendor clients are heavy); use :func:`connector_class`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

from connectors import registry

if TYPE_CHECKING:
    from connectors.base import Connector


class _Connectors(Mapping[str, str]):
    """source name -> "module:Class", read from the registry on each use (plug-ins load on first use)."""

    def __getitem__(self, source: str) -> str:
        return registry.get(source).connector

    def __iter__(self) -> Iterator[str]:
        return iter(registry.names())

    def __len__(self) -> int:
        return len(registry.names())


CONNECTORS: Mapping[str, str] = _Connectors()


def connector_class(source: str) -> type[Connector]:
    """The connector class for ``source``; ``KeyError`` for an unknown source."""
    return registry.get(source).connector_class()


__all__ = ["CONNECTORS", "connector_class"]
