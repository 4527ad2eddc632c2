"""Connectors: one module per external system. :data:`CONNECTORS` maps a source name to its class.

Classes are imported lazily (the vendor clients are heavy); use :func:`connector_class`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from connectors.base import Connector

#: source name -> "module:Class"
CONNECTORS: dict[str, str] = {
    "jira": "connectors.jira:JiraConnector",
    "zendesk": "connectors.zendesk:ZendeskConnector",
    "servicenow": "connectors.servicenow:ServiceNowConnector",
}

SOURCES = tuple(CONNECTORS)


def connector_class(source: str) -> type[Connector]:
    """The connector class for ``source``; ``KeyError`` for an unknown source."""
    module_name, _, class_name = CONNECTORS[source].partition(":")
    cls: type[Connector] = getattr(importlib.import_module(module_name), class_name)
    return cls


__all__ = ["CONNECTORS", "SOURCES", "connector_class"]
