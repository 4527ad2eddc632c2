"""Settings and routing keys from files: Docker and Kubernetes secrets and Vault agents mount each secret as
a file in a directory (``TICKETPAGER_SECRETS_DIR``, e.g. ``/run/secrets``).

A file named like the environment variable holds its value (``TICKETPAGER_JIRA__API_TOKEN``, nested
settings included; trailing newlines stripped), read by pydantic-settings' nested secrets source; a file
named like a rule's ``${PD_PLATFORM_KEY}`` holds that routing key, read at every rule (re)load, so a rotated
file is picked up by the next reload. The environment wins over a file. Values read from files are added to
the log redaction filter and never appear in messages.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from kernel import logs
from kernel.errors import ConfigError

ENV_NAME = "TICKETPAGER_SECRETS_DIR"
#: the names a rule's ``${NAME}`` may have (rules/validation.py ENV_REF): never a path
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: a routing key is 32 characters; a file much larger than any secret is not one (bounded read)
MAX_SECRET_BYTES = 64 * 1024


def configured_dir(init_kwargs: Mapping[str, Any], environ: Mapping[str, str] = os.environ) -> Path | None:
    """The secrets directory: ``Settings(secrets_dir=...)`` or ``TICKETPAGER_SECRETS_DIR`` (any case)."""
    given = init_kwargs.get("secrets_dir")
    if given is None:
        given = next((value for name, value in environ.items() if name.upper() == ENV_NAME), None)
    if given is None or not str(given).strip():
        return None
    path = Path(str(given).strip()).expanduser()
    if not path.is_dir():
        state = "does not exist" if not path.exists() else "is not a directory"
        raise ConfigError(f"{ENV_NAME}: {path} {state} (the directory where secret files are mounted)")
    return path


def read_secret(directory: Path, name: str) -> str | None:
    """The stripped content of ``directory/name`` if it is a file inside ``directory`` (symlinks such as
    Kubernetes' ``..data`` are followed only within it), else ``None``."""
    if not _NAME.fullmatch(name):
        return None
    path = directory / name
    try:
        resolved, root = path.resolve(strict=True), directory.resolve()
    except (OSError, RuntimeError):
        return None
    if root not in resolved.parents or not resolved.is_file():
        return None
    try:
        with resolved.open("rb") as handle:
            raw = handle.read(MAX_SECRET_BYTES + 1)
    except OSError:
        return None
    if len(raw) > MAX_SECRET_BYTES:
        raise ConfigError(f"{ENV_NAME}: {name} is over {MAX_SECRET_BYTES} bytes; not a secret")
    value = raw.decode("utf-8", errors="replace").strip()
    logs.FILTER.add([value] if len(value) >= 4 else [])
    return value


class EnvWithSecretFiles(Mapping[str, str]):
    """The environment, then the files of the secrets directory: how rules resolve ``${NAME}`` routing keys."""

    def __init__(self, directory: Path, environ: Mapping[str, str] = os.environ) -> None:
        self.directory = directory
        self.environ = environ

    def __getitem__(self, name: str) -> str:
        if name in self.environ:
            return self.environ[name]
        value = read_secret(self.directory, name)
        if value is None:
            raise KeyError(name)
        return value

    def _files(self) -> list[str]:
        try:
            return sorted(p.name for p in self.directory.iterdir() if _NAME.fullmatch(p.name))
        except OSError:
            return []

    def __iter__(self) -> Iterator[str]:
        yield from dict.fromkeys([*self.environ, *self._files()])

    def __len__(self) -> int:
        return len(set(self.environ) | set(self._files()))

    def __repr__(self) -> str:  # never the values
        return f"<EnvWithSecretFiles {self.directory}>"


def setting_files(directory: Path) -> list[str]:
    """Names of the files in ``directory`` that look like ticketpager settings (for the unknown-name warning)."""
    try:
        return sorted(p.name for p in directory.iterdir() if p.name.upper().startswith("TICKETPAGER_"))
    except OSError:
        return []
