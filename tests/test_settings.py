"""Settings: defaults, URL normalization, and one clear line naming a wrong setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.settings import SettingsError, load_settings


def test_defaults_are_sqlite_under_var_and_in_process_state(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MSJX_DATABASE_URL", "MSJX_REDIS_URL", "MSJX_DATA_DIR"):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings()
    assert settings.data_dir == Path("var")
    assert settings.async_database_url == "sqlite+aiosqlite:///var/msjx.db"
    assert settings.redis_url is None


def test_postgres_url_gets_the_async_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MSJX_DATABASE_URL", "postgresql://user@db:5432/msjx")
    assert load_settings().async_database_url == "postgresql+asyncpg://user@db:5432/msjx"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("MSJX_DATABASE_URL", "mysql://secret:pw@host/db"),
        ("MSJX_REDIS_URL", "http://localhost"),
        ("MSJX_UPSTREAM_TIMEOUT", "-1"),
        ("MSJX_UPSTREAM_URLS", "not json"),
        ("MSJX_NODE_ID", "bad id with spaces"),
    ],
)
def test_wrong_value_names_the_setting(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as info:
        load_settings()
    message = str(info.value)
    assert message.startswith(name + ":")
    assert "\n" not in message
    assert "secret" not in message and "pw@" not in message, "URLs may hold passwords: never echoed"
