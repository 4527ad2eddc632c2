"""An empty TICKETPAGER_RULES_PATH (a compose ``TICKETPAGER_RULES_PATH=`` or a Kubernetes ``value: ""``) is
not set: outside dry run the service refuses to start naming the setting, instead of loading whatever
``*.yaml`` files sit in its working directory as rules."""

from __future__ import annotations

from pathlib import Path

import pytest

from ticketpager import cli

# a rule file that happens to be in the working directory (without `when`, so that the code before the fix
# fails fast on it instead of serving it)
STRAY = (
    "version: 1\nrules:\n  - name: stray\n"
    "    trigger: {routing_key: R0123456789abcdef0123456789abcdef, severity: info, summary: x}\n"
)


@pytest.mark.parametrize("value", ["", "  "])
@pytest.mark.parametrize("argv", [["serve"], ["poll", "--once"]])
def test_an_empty_rules_path_is_refused_like_an_unset_one(
    argv: list[str],
    value: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("TICKETPAGER_RULES_PATH", value)
    monkeypatch.delenv("TICKETPAGER_DRY_RUN", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "stray.yaml").write_text(STRAY)
    database = tmp_path / "tp.db"
    code = cli.main(["--database-url", f"sqlite:///{database}", *argv])
    err = capsys.readouterr().err
    assert code == 2
    assert "TICKETPAGER_RULES_PATH is not set" in err, err
    assert not database.exists(), "refused before anything was created"


def test_an_empty_rules_option_is_refused_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("TICKETPAGER_RULES_PATH", raising=False)
    monkeypatch.delenv("TICKETPAGER_DRY_RUN", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "stray.yaml").write_text(STRAY)
    code = cli.main(["--database-url", f"sqlite:///{tmp_path / 'tp.db'}", "--rules", "", "serve"])
    assert code == 2
    assert "TICKETPAGER_RULES_PATH is not set" in capsys.readouterr().err
