"""Settings: the URL forms people paste, defaults, and refusals that stop start-up with one line."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from service.config import DEVELOPMENT_SECRET_KEY, ConfigError, Settings

from .conftest import ROOT


def build(**values: object) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgresql://u:p@db:5432/app", "postgresql+asyncpg://u:p@db:5432/app"),
        ("postgres://u:p@db/app", "postgresql+asyncpg://u:p@db/app"),
        ("postgresql+asyncpg://u:p@db:5432/app", "postgresql+asyncpg://u:p@db:5432/app"),
        ("sqlite:///data/app.db", "sqlite+aiosqlite:///data/app.db"),
        ("sqlite+aiosqlite:///data/app.db", "sqlite+aiosqlite:///data/app.db"),
        ("", "sqlite+aiosqlite:///instance/switchboard.db"),
    ],
)
def test_database_url_forms(given: str, expected: str) -> None:
    assert build(database_url=given).database_url == expected


def test_unset_database_url_is_the_embedded_sqlite_file() -> None:
    settings = build()
    assert settings.database_url == "sqlite+aiosqlite:///instance/switchboard.db"
    assert settings.uses_sqlite
    assert settings.redis_url is None


@pytest.mark.parametrize(
    ("variable", "value", "fragment"),
    [
        ("DATABASE_URL", "mysql://u@h/db", "unsupported scheme"),
        ("DATABASE_URL", "not a url", "not a URL"),
        ("DATABASE_URL", "postgresql://u@h:5432", "names no database"),
        ("REDIS_URL", "http://localhost:6379", "redis://"),
        ("LOG_LEVEL", "chatty", "LOG_LEVEL"),
        ("DATABASE_POOL_SIZE", "0", "greater than or equal to 1"),
        ("ALLOWED_ORIGINS", "example.com", "not an origin"),
    ],
)
def test_bad_setting_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, fragment: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as raised:
        Settings.from_environment()
    message = str(raised.value)
    assert message.startswith(f"{variable}:")
    assert fragment in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("secret", "fragment"),
    [
        (DEVELOPMENT_SECRET_KEY, "must be set in production"),
        ("short-secret", "at least 32 characters"),
    ],
)
def test_production_refuses_development_secrets(secret: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        build(app_env="production", secret_key=secret)


def test_production_refuses_wildcard_origins() -> None:
    with pytest.raises(ValueError, match="ALLOWED_ORIGINS"):
        build(app_env="production", secret_key="x" * 40, allowed_origins="*")


def test_production_accepts_a_real_secret_and_defaults_to_json_logs() -> None:
    settings = build(app_env="production", secret_key="s" * 48, allowed_origins="https://a.example")
    assert settings.is_production
    assert settings.effective_log_format == "json"
    assert build().effective_log_format == "console"


def test_allowed_origins_is_a_comma_list() -> None:
    settings = build(allowed_origins=" https://a.example, http://localhost:3000 ,")
    assert settings.allowed_origins == ["https://a.example", "http://localhost:3000"]


def test_blank_optional_urls_count_as_unset() -> None:
    settings = build(redis_url="  ", sentry_dsn="", metrics_token="")
    assert settings.redis_url is None
    assert settings.sentry_dsn is None
    assert settings.metrics_token is None


def _start_with(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {
        k: v for k, v in os.environ.items() if k not in Settings.model_fields and not k.startswith("TEST_")
    }
    return subprocess.run(
        [sys.executable, "-c", "from service import create_app; create_app()"],
        env={**clean, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_start_up_stops_with_one_clear_line_on_a_bad_setting() -> None:
    result = _start_with({"DATABASE_URL": "mysql://root@localhost/app"})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines == [
        "switchboard: configuration error: DATABASE_URL: unsupported scheme 'mysql' "
        "(use postgresql:// or sqlite:///)"
    ]


def test_production_start_up_stops_without_a_secret_key() -> None:
    result = _start_with({"APP_ENV": "production"})
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "SECRET_KEY must be set in production" in result.stderr
