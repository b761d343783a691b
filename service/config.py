"""Settings: every environment variable the service reads, typed, with its default.

The defaults are the embedded mode (SQLite file, in-process broker), so a fresh clone runs with no
configuration. Each variable is documented once, in docs/configuration.md.
"""

from __future__ import annotations

from email.utils import parseaddr
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from quart import current_app
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

# Development secrets production must refuse: the built-in default and anything shorter than 32 bytes.
DEVELOPMENT_SECRET_KEY = "development-only-secret-key-do-not-use-in-production"  # noqa: S105 - refused in production
MIN_SECRET_KEY_LENGTH = 32
EMBEDDED_DATABASE_PATH = Path("instance") / "switchboard.db"

NotifyChannel = Literal["log", "webhook", "email"]

_DRIVERS = {
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
    "postgresql+asyncpg": "postgresql+asyncpg",
    "sqlite": "sqlite+aiosqlite",
    "sqlite+aiosqlite": "sqlite+aiosqlite",
}


class ConfigError(Exception):
    """A setting is missing or wrong; the message is one line naming the variable."""


class Settings(BaseSettings):
    """The service's configuration. Build it directly in tests; `from_environment()` in production."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", case_sensitive=False)

    app_env: Literal["development", "production", "testing"] = "development"
    database_url: str = Field(default="", validate_default=True)
    redis_url: str | None = None
    secret_key: str = DEVELOPMENT_SECRET_KEY
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    log_format: Literal["json", "console"] | None = None
    allowed_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    sentry_dsn: str | None = None

    # Per process: hypercorn workers x instances x (pool_size + max_overflow) must stay under
    # PostgreSQL's max_connections (100 by default) with room for migrations and psql.
    database_pool_size: int = Field(default=10, ge=1, le=200)
    database_max_overflow: int = Field(default=5, ge=0, le=200)
    # A stalled database must cost a request a 503 within 5 s. The steps on that path (wait for a pooled
    # connection, an idle one's ping, a reconnect, the statements, the rollback) each have a timeout of
    # their own, and together they could add up past it: DATABASE_REQUEST_TIMEOUT is the one deadline
    # for all of them in a request (tests/faults measure it); the others bound background work too.
    # As long as the request deadline: a burst that holds every connection for a moment (a checkpoint's
    # slow commits, a CPU-bound spike) makes requests wait for one rather than shed them at 2 s with a 503
    # (the 500-user load run saw both); the deadline still bounds a request's whole database work.
    database_pool_timeout: float = Field(default=3.5, gt=0, le=120)
    database_pool_recycle: int = Field(default=1800, ge=-1)
    database_pool_pre_ping: bool = True
    database_pool_ping_after: float = Field(default=10.0, ge=0, le=3600)
    database_connect_timeout: float = Field(default=1.5, gt=0, le=120)
    database_statement_timeout: float = Field(default=2.0, gt=0, le=3600)
    database_request_timeout: float = Field(default=3.5, gt=0, le=3600)

    redis_socket_timeout: float = Field(default=1.0, gt=0, le=60)
    # Per process. Commands hold one only while they run (the event listener has its own): the soak peaked
    # at about 25 a worker with 150 clients.
    redis_max_connections: int = Field(default=50, ge=1, le=10_000)
    readiness_timeout: float = Field(default=1.5, gt=0, le=30)
    readiness_min_free_disk_mb: int = Field(default=100, ge=0)
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    # When set, /metrics answers only to `Authorization: Bearer <METRICS_TOKEN>`.
    metrics_token: str | None = None

    # Accounts and tokens.
    access_token_ttl_seconds: int = Field(default=3600, ge=60, le=86400)
    refresh_token_ttl_days: int = Field(default=30, ge=1, le=365)
    require_email_verification: bool = False
    password_reset_ttl_minutes: int = Field(default=30, ge=5, le=1440)
    email_verification_ttl_hours: int = Field(default=48, ge=1, le=720)
    # Hashes verified at once per process; more would only queue for the same two cores.
    password_hash_concurrency: int = Field(default=2, ge=1, le=64)
    # Where links in mails point: the address users reach the service at.
    public_base_url: str = "http://127.0.0.1:8000"

    # Agents: how often they should beat, when silence means offline, and when offline means stale.
    agent_heartbeat_interval: int = Field(default=10, ge=1, le=3600)
    agent_heartbeat_timeout: int = Field(default=30, ge=2, le=86400)
    agent_stale_after: int = Field(default=86400, ge=60, le=365 * 86400)
    sweep_interval: float = Field(default=5.0, gt=0, le=300)
    # Each process's cache of agent views (service/agent_cache.py): how many, and how long one is trusted
    # at most (it is checked against the agent's version on every use; the age only bounds what a
    # version change lost to a Redis failure could hide). 0 entries turns the cache off.
    agent_cache_size: int = Field(default=20_000, ge=0, le=1_000_000)
    agent_cache_seconds: float = Field(default=60.0, gt=0, le=3600)

    # Events: the replay window a reconnecting subscriber can resume within, and the SSE stream limits.
    event_retention_count: int = Field(default=10_000, ge=100, le=10_000_000)
    event_retention_hours: int = Field(default=24, ge=1, le=24 * 30)
    relay_interval: float = Field(default=1.0, gt=0, le=60)
    sse_heartbeat_seconds: float = Field(default=15.0, gt=0, le=120)
    sse_queue_size: int = Field(default=256, ge=8, le=100_000)
    sse_streams_per_user: int = Field(default=5, ge=1, le=1000)

    # Mail: "log" writes mails to the log (development); "smtp" sends them.
    mail_backend: Literal["log", "smtp"] = "log"
    mail_from: str = "Switchboard <switchboard@localhost>"
    smtp_host: str = "localhost"
    smtp_port: int = Field(default=25, ge=1, le=65535)
    smtp_username: str | None = None
    smtp_password: str | None = None
    smtp_starttls: bool = False
    smtp_timeout: float = Field(default=10.0, gt=0, le=120)

    # Notifications (work assigned, agent offline): the channels each one goes out on, delivered in the
    # background from the notifications table. The webhook and email settings matter only when their
    # channel is on; then they are required.
    notify_channels: Annotated[list[NotifyChannel], NoDecode] = Field(default=["log"])
    webhook_url: str | None = None
    webhook_secret: str | None = None
    # Off by default: a webhook aimed at 127.0.0.1 or 10.x would let whoever sets it probe the inside.
    webhook_allow_private: bool = False
    webhook_timeout: float = Field(default=5.0, gt=0, le=60)
    notify_email_to: str | None = None
    notify_max_attempts: int = Field(default=8, ge=1, le=30)
    notify_interval: float = Field(default=2.0, gt=0, le=3600)

    # Rate limits, "N/second|minute|hour|day"; stored in Redis when REDIS_URL is set.
    rate_limit_default: str = "300/minute"
    rate_limit_login: str = "10/minute"
    # Per username on top of the above: at most this many login attempts on one account, whatever the
    # address, so a slow guesser gets no more than 100 tries an hour (ASVS 6.3.1).
    rate_limit_login_account: str = "100/hour"
    rate_limit_register: str = "5/minute"
    rate_limits_enabled: bool = True
    # Proxies in front of the service whose X-Forwarded-For is trusted (0: use the peer address).
    trusted_proxy_hops: int = Field(default=0, ge=0, le=5)
    # The peers X-Forwarded-For is taken from when trusted_proxy_hops > 0; empty: any peer.
    trusted_proxies: Annotated[list[IPv4Network | IPv6Network], NoDecode] = Field(default_factory=list)

    @field_validator("database_url", mode="before")
    @classmethod
    def _normalise_database_url(cls, value: object) -> str:
        """Accept the forms people paste and choose the async driver for each."""
        if value is None or value == "":
            return f"sqlite+aiosqlite:///{EMBEDDED_DATABASE_PATH}"
        if not isinstance(value, str):
            raise ValueError("must be a URL string")
        try:
            url = make_url(value.strip())
        except ArgumentError:
            raise ValueError("is not a URL (expected postgresql://… or sqlite:///…)") from None
        driver = _DRIVERS.get(url.drivername)
        if driver is None:
            raise ValueError(f"unsupported scheme {url.drivername!r} (use postgresql:// or sqlite:///)")
        if driver.startswith("postgresql") and not url.database:
            raise ValueError("names no database (postgresql://user:pass@host:5432/dbname)")
        return url.set(drivername=driver).render_as_string(hide_password=False)

    @field_validator("allowed_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [origin.strip() for origin in value.split(",") if origin.strip()]
        return value

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _split_networks(cls, value: object) -> object:
        if isinstance(value, str):
            return [ip_network(item.strip(), strict=False) for item in value.split(",") if item.strip()]
        return value

    @field_validator("allowed_origins")
    @classmethod
    def _check_origins(cls, origins: list[str]) -> list[str]:
        for origin in origins:
            if origin != "*" and not origin.startswith(("http://", "https://")):
                raise ValueError(f"{origin!r} is not an origin (expected https://host[:port])")
        return origins

    @field_validator(
        "redis_url", "sentry_dsn", "metrics_token", "smtp_username", "smtp_password", mode="before"
    )
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value

    @field_validator(
        "rate_limit_default", "rate_limit_login", "rate_limit_login_account", "rate_limit_register"
    )
    @classmethod
    def _check_rate(cls, value: str) -> str:
        parse_rate(value)
        return value

    @field_validator("public_base_url")
    @classmethod
    def _check_base_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/")

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _production_refuses_development_secrets(self) -> Settings:
        if self.app_env == "production":
            if self.secret_key == DEVELOPMENT_SECRET_KEY:
                raise ValueError("SECRET_KEY must be set in production (the development default is refused)")
            if len(self.secret_key) < MIN_SECRET_KEY_LENGTH:
                raise ValueError(
                    f"SECRET_KEY must be at least {MIN_SECRET_KEY_LENGTH} characters in production"
                )
            if "*" in self.allowed_origins:
                raise ValueError("ALLOWED_ORIGINS must list origins in production, not '*'")
        return self

    @field_validator("notify_channels", mode="before")
    @classmethod
    def _split_channels(cls, value: object) -> object:
        if isinstance(value, str):
            value = [channel.strip().lower() for channel in value.split(",") if channel.strip()]
        if isinstance(value, list):
            return list(dict.fromkeys(value))  # "log,log" is one log line, not two
        return value

    @field_validator("webhook_url", "webhook_secret", "notify_email_to", mode="before")
    @classmethod
    def _blank_notification_setting_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("webhook_url")
    @classmethod
    def _check_webhook_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host")
        return value.strip()

    @field_validator("notify_email_to")
    @classmethod
    def _check_notify_email_to(cls, value: str | None) -> str | None:
        if value is not None and "@" not in parseaddr(value)[1]:
            raise ValueError("must be an email address")
        return value

    @model_validator(mode="after")
    def _enabled_channels_are_configured(self) -> Settings:
        if "webhook" in self.notify_channels:
            if self.webhook_url is None:
                raise ValueError("WEBHOOK_URL must be set when NOTIFY_CHANNELS includes webhook")
            if self.webhook_secret is None:
                raise ValueError("WEBHOOK_SECRET must be set when NOTIFY_CHANNELS includes webhook")
        if "email" in self.notify_channels and self.notify_email_to is None:
            raise ValueError("NOTIFY_EMAIL_TO must be set when NOTIFY_CHANNELS includes email")
        # Receivers trust a valid signature completely, so a guessable secret lets anyone forge events.
        short = self.webhook_secret is not None and len(self.webhook_secret) < MIN_SECRET_KEY_LENGTH
        if self.is_production and short:
            raise ValueError(
                f"WEBHOOK_SECRET must be at least {MIN_SECRET_KEY_LENGTH} characters in production"
            )
        return self

    @classmethod
    def from_environment(cls) -> Settings:
        """Read the environment (and `.env`), turning any problem into one clear ConfigError line."""
        try:
            return cls()
        except ValidationError as error:
            raise ConfigError(describe(error)) from None

    @property
    def is_production(self) -> bool:
        return self.app_env == "production"

    @property
    def uses_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def effective_log_format(self) -> Literal["json", "console"]:
        if self.log_format is not None:
            return self.log_format
        return "json" if self.is_production else "console"


_PERIODS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}


def parse_rate(text: str) -> tuple[int, int]:
    """'10/minute' -> (10, 60): a count and a period in seconds."""
    count, _, period = text.strip().partition("/")
    if not count.isdigit() or int(count) < 1 or period not in _PERIODS:
        raise ValueError(f"{text!r} is not a rate like '10/minute' (second, minute, hour or day)")
    return int(count), _PERIODS[period]


def describe(error: ValidationError) -> str:
    """One line per problem, each naming the environment variable."""
    problems = []
    for item in error.errors(include_url=False):
        name = str(item["loc"][0]).upper() if item["loc"] else "settings"
        message = str(item["msg"]).removeprefix("Value error, ")
        problems.append(f"{name}: {message}" if item["loc"] else message)
    return "; ".join(problems)


def current() -> Settings:
    """The running application's settings; call inside an app context."""
    settings: Settings = current_app.config["SETTINGS"]
    return settings
