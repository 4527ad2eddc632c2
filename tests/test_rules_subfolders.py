"""A rule directory with a folder per client (issue 17: ``rules/acme/*.yaml``): every subfolder's files are
read, in the order of their relative paths, by the loader, ``rules check`` and the hot-reload watcher; hidden
files and folders (``.git``, Kubernetes' ``..data``) and editors' backups are not rule files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kernel.clock import FakeClock
from rules import RuleFileErrors, RuleStore, load_rules
from ticketpager import cli

KEY = "R123456789abcdef0123456789abcdef"
RULE = (
    "version: 1\nrules:\n  - name: {name}\n    when: {{priority: P1}}\n"
    "    trigger: {{routing_key: '${{PD_KEY}}', severity: critical, summary: hi}}\n"
)
BAD = (
    "version: 1\nrules:\n  - name: acme-typo\n    when: {priorty: P1}\n"
    "    trigger: {routing_key: x, severity: info}\n"
)


def write(path: Path, text: str, bump: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    stat = path.stat()  # visible to mtime polling even within one clock tick
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + bump * 1_000_000_000))


def client_folders(root: Path) -> Path:
    write(root / "common.yaml", RULE.format(name="common"))
    write(root / "acme" / "zendesk.yaml", RULE.format(name="acme-zendesk"))
    write(root / "acme" / "jira.yml", RULE.format(name="acme-jira"))
    write(root / "globex" / "p1.yaml", RULE.format(name="globex-p1"))
    write(root / "globex" / "eu" / "p1.yaml", RULE.format(name="globex-eu-p1"))
    return root


def test_every_subfolders_rule_files_load_in_the_order_of_their_relative_paths(tmp_path: Path) -> None:
    ruleset = load_rules(client_folders(tmp_path), env={"PD_KEY": KEY})
    assert ruleset.names == ("acme-jira", "acme-zendesk", "common", "globex-eu-p1", "globex-p1")


def test_hidden_files_and_folders_and_editor_backups_are_not_rule_files(tmp_path: Path) -> None:
    client_folders(tmp_path)
    for stray in (
        ".git/config.yaml",  # a rule repository checked out in place
        "..2026_12_04_05_00_00.123/common.yaml",  # a Kubernetes ConfigMap mount: the same files again
        "..data/common.yaml",
        "acme/.zendesk.yaml",  # an editor's hidden working copy
        "acme/.#zendesk.yaml",  # Emacs' lock file
        "acme/#zendesk.yaml#",  # Emacs' autosave
        "acme/zendesk.yaml~",  # a backup
        "globex/.old/p1.yaml",
    ):
        write(tmp_path / stray, BAD)
    ruleset = load_rules(tmp_path, env={"PD_KEY": KEY})
    assert ruleset.names == ("acme-jira", "acme-zendesk", "common", "globex-eu-p1", "globex-p1")


def test_the_same_files_in_the_same_folders_give_the_same_digest_and_a_move_changes_it(tmp_path: Path) -> None:
    one = load_rules(client_folders(tmp_path / "one"), env={"PD_KEY": KEY})
    two = load_rules(client_folders(tmp_path / "two"), env={"PD_KEY": KEY})
    assert one.digest == two.digest
    (tmp_path / "two" / "acme" / "zendesk.yaml").rename(tmp_path / "two" / "globex" / "zendesk.yaml")
    moved = load_rules(tmp_path / "two", env={"PD_KEY": KEY})
    assert moved.digest != one.digest


def test_an_error_in_a_subfolder_is_reported_at_its_path_line_and_column(tmp_path: Path) -> None:
    client_folders(tmp_path)
    write(tmp_path / "acme" / "typo.yaml", BAD)
    with pytest.raises(RuleFileErrors) as caught:
        load_rules(tmp_path, env={"PD_KEY": KEY})
    where = {f"{e.path}:{e.line}:{e.col}" for e in caught.value.errors}
    assert f"{tmp_path / 'acme' / 'typo.yaml'}:4:12" in where, str(caught.value)
    assert all(e.path == str(tmp_path / "acme" / "typo.yaml") for e in caught.value.errors), str(caught.value)


def test_rules_check_reads_the_subfolders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PD_KEY", KEY)
    client_folders(tmp_path)
    assert cli.main(["rules", "check", str(tmp_path)]) == 0, capsys.readouterr().err
    out = capsys.readouterr()
    assert "5 rules" in out.out + out.err, out
    write(tmp_path / "acme" / "typo.yaml", BAD)
    assert cli.main(["rules", "check", str(tmp_path)]) == 1, "a bad file in a client's folder must fail the check"
    err = capsys.readouterr().err
    assert f"{tmp_path / 'acme' / 'typo.yaml'}:4:12:" in err, err


def test_a_directory_with_rule_files_only_in_subfolders_is_a_rule_set(tmp_path: Path) -> None:
    write(tmp_path / "acme" / "p1.yaml", RULE.format(name="acme-p1"))
    assert load_rules(tmp_path, env={"PD_KEY": KEY}).names == ("acme-p1",)


def test_the_watcher_notices_a_change_a_new_file_and_a_removal_in_a_subfolder(tmp_path: Path) -> None:
    client_folders(tmp_path)
    store = RuleStore(tmp_path, env={"PD_KEY": KEY}, clock=FakeClock())
    assert store.check_for_changes() is None
    write(tmp_path / "acme" / "zendesk.yaml", RULE.format(name="acme-renamed"), bump=1)
    assert store.check_for_changes() is True
    assert "acme-renamed" in store.current.names and "acme-zendesk" not in store.current.names
    write(tmp_path / "initech" / "jira.yaml", RULE.format(name="initech-jira"))
    assert store.check_for_changes() is True and "initech-jira" in store.current.names
    write(tmp_path / "globex" / "eu" / "p1.yaml", BAD, bump=2)
    assert store.check_for_changes() is False, "a bad edit in a subfolder is a failed reload"
    assert store.last_error is not None and f"{tmp_path / 'globex' / 'eu' / 'p1.yaml'}:4:12:" in store.last_error
    assert "globex-eu-p1" in store.current.names, "the last good set stays"
    (tmp_path / "globex" / "eu" / "p1.yaml").unlink()
    assert store.check_for_changes() is True and "globex-eu-p1" not in store.current.names
    write(tmp_path / "acme" / ".zendesk.yaml.swp", "binary junk")
    write(tmp_path / "acme" / "zendesk.yaml~", BAD)
    assert store.check_for_changes() is None, "an editor's files are no change to the rule set"


def test_a_client_folder_that_cannot_be_read_is_an_error_not_a_rule_set_without_that_client(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file system refuses one folder (permissions, an I/O error; faked at the file system, as root reads
    everything): the rule set does not load without Acme's rules, it fails naming the folder."""
    root = client_folders(tmp_path / "rules")
    listing = Path.iterdir

    def iterdir(self: Path):  # type: ignore[no-untyped-def]
        if self.name == "acme":
            raise PermissionError(13, "Permission denied")
        return listing(self)

    monkeypatch.setattr(Path, "iterdir", iterdir)
    with pytest.raises(RuleFileErrors) as caught:
        load_rules(root, env={"PD_KEY": KEY})
    [error] = caught.value.errors
    assert str(error) == f"{root / 'acme'}:1:1: cannot read this rule folder: Permission denied"


def test_rule_folders_nested_past_the_bound_are_an_error(tmp_path: Path) -> None:
    """A symlink to ``/`` or a runaway tree is not walked without end."""
    root = tmp_path / "rules"
    write(root / "top.yaml", RULE.format(name="top"))
    deep = root.joinpath(*[f"d{n}" for n in range(10)])
    write(deep / "p1.yaml", RULE.format(name="deep"))
    with pytest.raises(RuleFileErrors) as caught:
        load_rules(root, env={"PD_KEY": KEY})
    [error] = caught.value.errors
    assert "rule folders nest more than 8 deep" in str(error)
