"""What an operator reads when `serve` starts: whole sentences, none cut by the log redaction."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.serve_proc import Serve
from tests.test_crash_recovery import serve_env


def test_a_placeholder_routing_key_is_one_readable_sentence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The warning about a key PagerDuty would refuse keeps its words: the redaction takes text after `key:` for
    a credential, so `…integration key: its pages…` used to be logged as `…integration key: [redacted] pages…`."""
    examples = Path(__file__).resolve().parent.parent / "rules" / "examples"
    env = serve_env(f"sqlite:///{tmp_path / 'tp.db'}", examples, "http://127.0.0.1:9/v2/enqueue")
    del env["PD_PLATFORM_KEY"]  # the example falls back to its `dry-run-platform` placeholder
    monkeypatch.delenv("PD_PLATFORM_KEY", raising=False)
    proc = Serve(env).start()
    assert proc.stop() == 0
    line = next(line for line in proc.output().splitlines() if "rule 'jira-ops-p1': routing key" in line)
    assert "[redacted]" not in line, line
    assert "PagerDuty would refuse its pages" in line, line
    assert "dry-run-platform" not in line, "the key itself is masked"
