"""Switchboard: the app factory, which is the table of contents of the service."""

from __future__ import annotations

import sys

from quart_schema import Info, QuartSchema

from service import (
    agent_cache,
    application,
    background,
    cli,
    db,
    draining,
    errors,
    heap,
    identity,
    log,
    mail,
    middleware,
    openapi,
    passwords,
    presence,
    rate_limits,
    redis_client,
)
from service.application import Switchboard
from service.blueprints import api, auth, dashboard, docs, health
from service.config import ConfigError, Settings
from service.events import outbox, stream
from service.services import notifications, retention, sweeper


def create_app(settings: Settings | None = None) -> Switchboard:
    """Build the application. With no settings it reads the environment (and `.env`).

    Nothing connects here: the database engine and Redis open in before_serving.
    """
    if settings is None:
        try:
            settings = Settings.from_environment()
        except ConfigError as error:
            # One clear line, no traceback: the operator fixes the variable and starts again.
            print(f"switchboard: configuration error: {error}", file=sys.stderr)
            raise SystemExit(2) from None
    log.configure(settings.log_level, settings.effective_log_format)

    app = Switchboard(__name__)
    app.config.update(
        SETTINGS=settings,
        SECRET_KEY=settings.secret_key,
        MAX_CONTENT_LENGTH=settings.max_body_bytes,
        TESTING=settings.app_env == "testing",
    )
    QuartSchema(
        app,
        info=Info(
            title="Switchboard API",
            version=health.VERSION,
            description="Register agents, assign them work and watch them live.",
        ),
        openapi_path="/openapi.json",
        openapi_provider_class=openapi.Provider,
        swagger_ui_path=None,  # served by blueprints/docs.py with local assets and a strict CSP
        redoc_ui_path=None,
        scalar_ui_path=None,
        security_schemes={"bearerAuth": {"type": "http", "scheme": "bearer", "bearer_format": "JWT"}},
        tags=[
            {"name": "health", "description": "Liveness, readiness and metrics."},
            {"name": "auth", "description": "Accounts, login sessions and tokens."},
            {"name": "users", "description": "User management, roles and login sessions."},
            {"name": "audit", "description": "The audit log of security-relevant actions."},
            {"name": "agents", "description": "Agents: registration, heartbeats, status and the fleet."},
            {"name": "assignments", "description": "Work given to agents and its lifecycle."},
            {"name": "events", "description": "The live event stream (server-sent events)."},
            {"name": "notifications", "description": "Notifications sent, waiting and failed."},
        ],
    )
    app.json.sort_keys = False  # type: ignore[attr-defined]  # keep the envelope's field order
    application.serve_models_as_json(app)
    _init_sentry(app, settings)
    errors.init_app(app)
    db.init_app(app, settings)
    redis_client.init_app(app, settings)
    middleware.init_app(app, settings)
    identity.init_app(app, settings)
    rate_limits.init_app(app, settings)
    mail.init_app(app, settings)
    background.init_app(app)
    draining.init_app(app)
    notifications.init_app(app, settings)
    presence.init_app(app)
    agent_cache.init_app(app, settings.agent_cache_size, settings.agent_cache_seconds)
    outbox.init_app(app, settings)
    stream.init_app(app, settings)
    sweeper.init_app(app, settings)
    retention.init_app(app, settings)
    passwords.configure(settings.password_hash_concurrency)

    cli.init_app(app, settings)

    app.register_blueprint(health.blueprint)
    app.register_blueprint(docs.blueprint)
    app.register_blueprint(auth.blueprint)
    app.register_blueprint(api.blueprint)
    app.register_blueprint(dashboard.blueprint)
    heap.init_app(app)  # last: its before_serving freezes what the others opened
    return app


def _init_sentry(app: Switchboard, settings: Settings) -> None:
    if settings.sentry_dsn is None:
        return
    try:
        import sentry_sdk
        from sentry_sdk.integrations.quart import QuartIntegration
    except ImportError:
        print(
            "switchboard: configuration error: SENTRY_DSN is set but sentry-sdk is not installed "
            "(pip install 'switchboard[sentry]')",
            file=sys.stderr,
        )
        raise SystemExit(2) from None
    sentry_sdk.init(
        dsn=settings.sentry_dsn,
        integrations=[QuartIntegration()],
        environment=settings.app_env,
        release=health.VERSION,
    )
    app.extensions["sentry"] = True
