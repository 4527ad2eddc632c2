"""Outside dry run, `serve` and `poll` refuse to start without TICKETPAGER_RULES_PATH: the bundled example
rules (placeholder routing keys) run only in dry run, never quietly in production."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest

from tests.serve_proc import Serve
from ticketpager import cli


@pytest.mark.parametrize("argv", [["serve"], ["poll", "--once"]])
def test_without_a_rules_path_the_service_refuses_to_start_naming_the_setting(
    argv: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("TICKETPAGER_RULES_PATH", raising=False)
    monkeypatch.delenv("TICKETPAGER_DRY_RUN", raising=False)
    monkeypatch.chdir(tmp_path)  # no .env here
    database = tmp_path / "tp.db"
    code = cli.main(["--database-url", f"sqlite:///{database}", *argv])
    err = capsys.readouterr().err
    assert code == 2
    assert "TICKETPAGER_RULES_PATH is not set" in err and "--dry-run" in err and "--rules" in err
    assert "Traceback" not in err
    assert not database.exists(), "refused before anything was created"


def test_the_bundled_examples_still_run_in_dry_run(tmp_path: Path) -> None:
    """A real `serve --dry-run` without a rules path: ready, on the bundled examples (the README's quick start)."""
    env = {"TICKETPAGER_DATABASE_URL": f"sqlite:///{tmp_path / 'tp.db'}", "TICKETPAGER_RULES_PATH": ""}
    serve = Serve(env, args=("--dry-run",))
    del serve.env["TICKETPAGER_RULES_PATH"]
    serve.start()
    try:
        with urllib.request.urlopen(f"{serve.url}/readyz", timeout=5) as resp:  # noqa: S310 - loopback
            ready = json.loads(resp.read())
    finally:
        assert serve.stop() == 0
    assert ready["ready"] is True and ready["rules"]["count"] >= 4, ready
