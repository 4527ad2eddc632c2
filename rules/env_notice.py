"""``rules check``'s notice for unset ``${VAR}`` routing keys: one group, by variable, not one error each.

An admin checking their own rule file on a laptop has none of the PagerDuty keys: the file is valid, the
environment is incomplete. The notice says so once, names every variable with where it is used, and
says what to do; ``serve`` still refuses to load rules whose keys are missing (see docs/rules.md).
"""

from __future__ import annotations

from collections.abc import Sequence

from rules.loader import RuleFileError
from rules.validation import MissingEnv

#: what each command's own ``--allow-missing-env`` does, for the notice's last line
ALLOW = {
    "check": "run 'rules check --allow-missing-env' to check the files alone (exit 0)",
    "test": "run 'rules test --allow-missing-env' to test them with placeholder keys",
}


def missing_env_notice(
    path: str, warnings: Sequence[RuleFileError], valid: bool, command: str = "check"
) -> list[str]:
    """The grouped notice, one line per variable (empty when nothing is missing)."""
    by_variable: dict[str, list[MissingEnv]] = {}
    for warning in warnings:
        if isinstance(warning, MissingEnv):
            by_variable.setdefault(warning.variable, []).append(warning)
    if not by_variable:
        return []
    state_of_files = "the rules are valid, but" if valid else "besides the errors above,"
    lines = [f"{path}: {state_of_files} this environment is incomplete for their routing keys:"]
    for variable, uses in by_variable.items():
        state = "is empty" if uses[0].empty else "is not set"
        where = ", ".join(f"{use.path}:{use.line}:{use.col}" for use in uses)
        lines.append(f"  {variable} {state} (used at {where})")
    lines.append(
        "'ticketpager serve' refuses to load these rules until they are set: set them where the service runs, "
        f"or {ALLOW[command]}."
    )
    return lines
