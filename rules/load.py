"""``load_rules``: read a rule file or directory, validate all of it, and compile it into a :class:`RuleSet`."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rules.evaluator import RuleSet
from rules.loader import RuleFileError, RuleFileErrors, parse_text, read_file, relative_name, rule_files
from rules.validation import Validator


def load_rules(
    path: str | Path,
    env: Mapping[str, str] | None = None,
    *,
    env_warnings: list[RuleFileError] | None = None,
    check_key_format: bool = False,
    warnings: list[RuleFileError] | None = None,
) -> RuleSet:
    """Load, validate and compile a rule set; raises :class:`RuleFileErrors` listing every problem.

    ``path`` is one file or a directory of ``*.yaml`` files, its subfolders' too, merged in the order of their
    relative paths. ``env`` (default
    ``os.environ``) resolves ``${VAR}`` / ``${VAR:-default}`` routing keys. With ``env_warnings`` (a list,
    for ``rules check --allow-missing-env``), an unset or empty ``${VAR}`` is not an error: it is appended
    there as a warning and the rule gets a placeholder routing key. With ``check_key_format`` (``rules check``
    and ``rules test``), a literal key or a variable's value that is not a PagerDuty integration key is an error;
    a ``${VAR:-default}`` default is not judged (the examples' ``dry-run-…`` defaults are placeholders).
    ``warnings`` (a list) receives what loads but may not do what is meant (a ``source: any`` rule's dotted
    path that no system's payload has), errors or not.
    """
    environment: Mapping[str, str] = os.environ if env is None else env
    root = Path(path)
    files, errors = rule_files(root)
    digest = hashlib.sha256(b"ticketpager-rules-v1\0")
    documents: list[tuple[str, Any]] = []
    order: dict[str, int] = {}
    for index, file in enumerate(files):
        order[str(file)] = index
        text, problems = read_file(file)
        errors.extend(problems)
        if text is None:
            continue
        digest.update(relative_name(file, root).encode() + b"\0" + text.encode() + b"\0")
        value, problems = parse_text(text, str(file))
        errors.extend(problems)
        if value is not None:
            documents.append((str(file), value))
    incomplete = len(documents) < len(files)  # a calendar may be defined in the file that did not load
    validator = Validator(
        environment,
        allow_missing_env=env_warnings is not None,
        incomplete=incomplete,
        check_key_format=check_key_format,
    )
    spec = validator.validate(documents)
    explained = {(e.path, e.line, e.col) for e in errors}  # `continue: yes`: the YAML error says it all
    errors.extend(e for e in validator.errors if (e.path, e.line, e.col) not in explained)
    if env_warnings is not None:
        env_warnings.extend(_sorted(validator.warnings, order))
    if warnings is not None:
        warnings.extend(_sorted(validator.notices, order))
    if errors:
        raise RuleFileErrors(_sorted(errors, order))
    for rule in spec.rules:  # a changed key changes the digest; only a hash of it is mixed in
        digest.update(hashlib.sha256(rule.trigger.routing_key.encode()).digest())
    return RuleSet(spec, digest.hexdigest()[:16])


def _sorted(errors: list[RuleFileError], order: Mapping[str, int]) -> list[RuleFileError]:
    unique = list(dict.fromkeys(errors))
    return sorted(unique, key=lambda e: (order.get(e.path, -1), e.line, e.col))
