"""The database URL's password never shows in ``repr`` or ``str`` of the settings (docs/operations.md §8), though
the URL is a plain string every user of the setting passes to SQLAlchemy as it is."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from ticketpager.settings import Settings

PASSWORD = "Sup3rS3cretPw"


@pytest.mark.parametrize("shown", [repr, str])
def test_the_database_password_is_masked_in_repr_and_str(
    shown: Callable[[object], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TICKETPAGER_DATABASE_URL", f"postgresql+psycopg://ticketpager:{PASSWORD}@db:5432/tp")
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    text = shown(settings)
    assert PASSWORD not in text
    assert "postgresql+psycopg://ticketpager:***@db:5432/tp" in text  # the rest still helps
    assert settings.database_url.endswith(f":{PASSWORD}@db:5432/tp")  # what the store connects with


def test_a_percent_encoded_password_is_masked_too() -> None:
    settings = Settings(database_url="postgresql://tp:S3cr%40etPa55@db/tp", _env_file=None)  # type: ignore[call-arg]
    for text in (repr(settings), str(settings)):
        assert "S3cr" not in text and "etPa55" not in text and "tp:***@db/tp" in text


def test_a_url_that_would_be_cut_at_an_unencoded_at_sign_is_not_shown_at_all() -> None:
    """Parsed as it stands, 'etPa55' would be the host: shown, half the password with it."""
    settings = Settings(database_url="postgresql://tp:S3cr@etPa55@db/tp", _env_file=None)  # type: ignore[call-arg]
    for text in (repr(settings), str(settings)):
        assert "S3cr" not in text and "etPa55" not in text and "not shown" in text
