"""RuleStore: atomic hot reload that keeps the last good rule set."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from kernel.clock import FakeClock
from rules import RuleFileErrors, RuleStore

GOOD = (
    "version: 1\nrules:\n  - name: {name}\n    when: {{priority: P1}}\n"
    "    trigger: {{routing_key: '${{PD_KEY}}', severity: critical, summary: hi}}\n"
)
SECRET = "routing-key-that-must-stay-secret"


def _write(path: Path, text: str, bump: int = 0) -> None:
    path.write_text(text)
    stat = path.stat()  # make the change visible to mtime polling even within one clock tick
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + bump * 1_000_000_000))


def test_reload_swaps_in_a_valid_set(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(GOOD.format(name="one"))
    clock = FakeClock()
    store = RuleStore(tmp_path, env={"PD_KEY": SECRET}, clock=clock)
    assert store.current.names == ("one",) and store.loaded_at == clock.now()
    (tmp_path / "b.yaml").write_text(GOOD.format(name="two"))
    clock.advance(60)
    assert store.reload() is True
    assert store.current.names == ("one", "two")
    assert store.loaded_at == clock.now() and store.last_error is None and store.reload_failures == 0


def test_invalid_change_keeps_the_last_good_set(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "a.yaml"
    path.write_text(GOOD.format(name="one"))
    clock = FakeClock()
    store = RuleStore(path, env={"PD_KEY": SECRET}, clock=clock)
    good, loaded_at = store.current, store.loaded_at
    # one good rule added plus one broken rule: the whole new set is refused
    path.write_text(GOOD.format(name="one") + "  - name: two\n    when: {priority: {equal: P2}}\n")
    clock.advance(5)
    assert store.reload() is False
    assert store.current is good and store.loaded_at == loaded_at
    assert store.reload_failures == 1
    assert store.last_error is not None and store.last_error.splitlines()[1] == (
        f"{path}:7:23: rule 'two' → when → priority: unknown operator 'equal' (did you mean 'equals'?)"
    )
    assert "unknown operator 'equal'" in caplog.text and SECRET not in caplog.text
    # fixing the file recovers and clears the error
    path.write_text(GOOD.format(name="one") + GOOD.format(name="two").split("rules:\n")[1])
    assert store.reload() is True and store.current.names == ("one", "two") and store.last_error is None


def test_first_load_failure_raises(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("version: 1\nrules: 3\n")
    with pytest.raises(RuleFileErrors):
        RuleStore(tmp_path, env={})


def test_check_for_changes_reloads_only_when_files_change(tmp_path: Path) -> None:
    path = tmp_path / "a.yaml"
    path.write_text(GOOD.format(name="one"))
    store = RuleStore(tmp_path, env={"PD_KEY": SECRET})
    assert store.check_for_changes() is None
    _write(path, GOOD.format(name="renamed"), bump=2)
    assert store.check_for_changes() is True and store.current.names == ("renamed",)
    assert store.check_for_changes() is None
    _write(path, "version: 1\nrules: [", bump=4)
    assert store.check_for_changes() is False and store.current.names == ("renamed",)
    assert store.check_for_changes() is None  # a failed version is not retried until the files change again
    assert store.reload_failures == 1


def test_watcher_thread_picks_up_changes(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    path = tmp_path / "a.yaml"
    path.write_text(GOOD.format(name="one"))
    store = RuleStore(tmp_path, env={"PD_KEY": SECRET})
    store.start_watching(interval=0.01)
    try:
        store.reloaded.clear()
        _write(path, GOOD.format(name="watched"), bump=2)
        assert store.reloaded.wait(timeout=10), "the watcher never reloaded"
        assert store.current.names == ("watched",)
    finally:
        store.stop()
    assert "rules reloaded" in caplog.text


def test_unknown_filter_in_a_reload_is_a_normal_reload_failure(tmp_path: Path) -> None:
    path = tmp_path / "a.yaml"
    path.write_text(GOOD.format(name="one"))
    store = RuleStore(path, env={"PD_KEY": SECRET})
    good = store.current
    path.write_text(GOOD.format(name="one").replace("summary: hi", "summary: '{{ ticket.title | upperr }}'"))
    assert store.reload() is False
    assert store.current is good and store.reload_failures == 1
    assert store.last_error == (
        f"{path}:5:89: rule 'one' → trigger → summary: unknown filter 'upperr' (did you mean 'upper'?)"
    )


def test_any_exception_during_reload_counts_as_a_failure_and_replaces_a_stale_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "a.yaml"
    path.write_text(GOOD.format(name="one"))
    store = RuleStore(path, env={"PD_KEY": SECRET})
    good = store.current
    path.write_text("version: 1\nrules: [")
    assert store.reload() is False and store.reload_failures == 1
    stale = store.last_error
    assert stale is not None and "invalid YAML" in stale

    def explode(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr("rules.reload.load_rules", explode)
    store.reloaded.clear()
    assert store.reload() is False
    assert store.current is good and store.reload_failures == 2 and store.reloaded.is_set()
    assert store.last_error == "rule reload failed unexpectedly: RuntimeError: disk on fire"
    assert "rule reload failed unexpectedly" in caplog.text
    # the watcher path goes through the same accounting (no bare "will retry" with a stale error)
    _write(path, GOOD.format(name="two"), bump=3)
    assert store.check_for_changes() is False and store.reload_failures == 3
    monkeypatch.undo()
    _write(path, GOOD.format(name="two"), bump=5)
    assert store.check_for_changes() is True and store.last_error is None and store.current.names == ("two",)
