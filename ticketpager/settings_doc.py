"""Print the README settings table from the settings tree: ``python -m ticketpager.settings_doc``.

A test compares the README with this output, so the documented settings never drift from the code.
The meaning column is the field's trailing ``# comment`` in ``ticketpager/settings.py`` or a system's settings
model (``connectors/settings.py``, a plug-in's module), or :data:`MEANINGS`.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel, SecretStr

from ticketpager import settings as tree

PREFIX = "TICKETPAGER_"



def _sections(model: type[BaseModel]) -> dict[str, type[BaseModel]]:
    """The nested sections of ``model`` (HTTP, PAGERDUTY, ENGINE, then one per registered system)."""
    found: dict[str, type[BaseModel]] = {}
    for name, field in model.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            found[name.upper()] = field.annotation
    return found


SECTIONS: dict[str, type[BaseModel]] = _sections(tree.Settings)
MEANINGS = {
    "enabled": "turn polling and write-back on for this source (webhooks only need a secret)",
    "webhook_secrets": "webhook signing secret(s); comma-separated or a JSON list, several for rotation",
    "poll_interval_seconds": "seconds between reconciling polls",
    "write_back": "leave a note on the ticket on trigger / acknowledge / resolve",
    "timeout_seconds": "HTTP timeout in seconds",
    "database_url": "SQLite (one process) or PostgreSQL (replicas), as an SQLAlchemy URL; percent-encode the "
    "password (@ as %40, / as %2F, : as %3A)",
    "rules_path": "a rule file or a directory of *.yaml; required outside dry run",
    "host": "listen address",
    "port": "listen port",
    "dry_run": "log PagerDuty events instead of sending them",
    "max_body_bytes": "webhook bodies over this get 413",
    "log_level": "any case",
    "log_format": "text or json lines",
    "region": "PagerDuty service region (us or eu)",
    "max_attempts": "delivery attempts before a dead letter",
    "backoff_base_seconds": "first retry delay (exponential, full jitter)",
    "backoff_cap_seconds": "largest retry delay",
    "workers": "threads per process sending to PagerDuty (events, incident updates); tickets have their own",
    "batch_size": "changes per engine transaction",
    "page_size": "records per API page",
    "table": "the ServiceNow table to poll",
    "username": "ServiceNow integration user",
    "password": "its password",
    "email": "the API user's e-mail (basic auth with the token)",
    "api_token": "API token",
    "signature_tolerance_seconds": "webhook timestamps further than this from now are replays",
    "brand_ids": "only tickets of these brands (empty: all)",
    "overlap_seconds": "re-read this much of the last window",
}


def _comments(cls: type[BaseModel]) -> dict[str, str]:
    found: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not (isinstance(klass, type) and issubclass(klass, BaseModel)) or klass.__module__.startswith("pydantic"):
            continue  # our models' own fields (a system's section may live in its plug-in's module)
        if klass.__module__ == tree.__name__ and klass.__name__ == "Settings":
            continue  # built from the registry: no source of its own
        for line in inspect.getsource(klass).splitlines():
            match = re.match(r"\s{4}(\w+):.*?#\s*(.*)$", line)
            if match:
                found[match.group(1)] = match.group(2)
    return found


def rows(model: type[BaseModel] = tree.Settings, prefix: str = PREFIX) -> Iterator[tuple[str, str, str, str]]:
    """(environment variable, type, default, meaning) for every leaf setting."""
    comments = _comments(model)
    for name, field in model.model_fields.items():
        env = f"{prefix}{name.upper()}"
        annotation: Any = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from rows(annotation, env + "__")
            continue
        default = field.get_default(call_default_factory=True)
        shown = "" if isinstance(default, SecretStr) or default is None else str(default)
        if name == "rules_path":
            shown = "rules/examples (bundled, dry run only)"
        kind = str(annotation)
        for noise in ("typing.", "<class '", "'>", "pydantic.types.", "pathlib.", "Annotated[", ", NoDecode]"):
            kind = kind.replace(noise, "")
        yield env, kind + _bounds(field.metadata), shown, comments.get(name) or MEANINGS.get(name, "")


#: how the settings' pydantic bounds (``Field(gt=0)``, ``ge=``, ``le=``) read in the type column
_BOUND_SIGNS = {"gt": ">", "ge": "≥", "lt": "<", "le": "≤"}


def _bounds(metadata: list[Any]) -> str:
    """A setting's range for the table (``int, ≥ 1``): a value outside it stops every command with exit 2."""
    found = [
        f"{sign} {getattr(item, name)}"
        for item in metadata
        for name, sign in _BOUND_SIGNS.items()
        if getattr(item, name, None) is not None
    ]
    return "".join(f", {bound}" for bound in found)


def table() -> str:
    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    lines = ["| environment variable | type | default | meaning |", "|---|---|---|---|"]
    for env, kind, default, meaning in rows():
        shown = f"`{default}`" if default else "(empty)"
        lines.append(f"| `{env}` | {cell(kind)} | {shown} | {cell(meaning)} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(table(), end="")
