"""Exit codes of every ``ticketpager`` command: one table, used by the code, each ``--help`` and the README.

The README's exit-code table is checked against :data:`TABLE` by a test, so the documentation and the
commands cannot drift apart.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence

EXIT_OK = 0
EXIT_PROBLEM = 1
EXIT_USAGE = 2

TABLE: tuple[tuple[int, str], ...] = (
    (EXIT_OK, "success; for a check (`rules check`, `rules test --expect`, `status --check`): nothing wrong"),
    (
        EXIT_PROBLEM,
        "the command ran and found a problem: rule files with errors (`rules check`, `rules test`, "
        "`rules backtest`), a `rules test --expect` mismatch, problems found by `status --check`, a failed poll "
        "(`poll --once`), a vendor API failing during `rules backtest`, the database unreachable or a migration "
        "failing, an unknown dead-letter or silence id (or a silence already ended)",
    ),
    (
        EXIT_USAGE,
        "usage or configuration: wrong arguments, an invalid `TICKETPAGER_*` setting or secret file, a missing "
        "file, database or tables, a database schema older than this version for a command that does not migrate "
        "(`status`, `deadletters`, `silence`: run `db upgrade`), valid rule files whose routing-key variables are "
        "unset (`rules check` or `rules test` without `--allow-missing-env`), no `TICKETPAGER_RULES_PATH` outside "
        "`--dry-run`, the service's rule files not loading when `serve` or `poll` start, a dry run and a live "
        "instance sharing a database (`serve`, `poll`), nothing to poll (`poll --once`, or `rules backtest` for a "
        "source without API credentials)",
    ),
)

DOC = "docs: README.md, 'Command line' (exit codes of every command)"


def _wrapped(code: int, meaning: str) -> list[str]:
    first, *more = textwrap.wrap(meaning, width=100)
    return [f"  {code}  {first}", *(f"     {line}" for line in more)]


def epilog(examples: Sequence[str], exits: Mapping[int, str]) -> str:
    """The end of a command's ``--help``: examples to copy, and what each exit code means for it."""
    lines = ["examples:"]
    lines += [f"  {example}" for example in examples]
    lines += ["", "exit codes:"]
    for code, meaning in sorted(exits.items()):
        lines += _wrapped(code, meaning)
    lines += ["", DOC]
    return "\n".join(lines)


def overview() -> str:
    """The table as plain text, for ``ticketpager --help``."""
    lines = ["exit codes (every command):"]
    for code, meaning in TABLE:
        lines += _wrapped(code, meaning.replace("`", ""))
    return "\n".join(lines)


def markdown_table() -> str:
    """The README's exit-code table."""
    rows = ["| exit code | meaning |", "|---|---|"]
    rows += [f"| {code} | {meaning} |" for code, meaning in TABLE]
    return "\n".join(rows) + "\n"
