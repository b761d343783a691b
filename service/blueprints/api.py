"""The versioned JSON API: every resource blueprint hangs under /api/v1."""

from __future__ import annotations

from quart import Blueprint

from service.blueprints import agents, assignments, audit, events, notifications, users

blueprint = Blueprint("api_v1", __name__, url_prefix="/api/v1")
blueprint.register_blueprint(users.blueprint)
blueprint.register_blueprint(audit.blueprint)
blueprint.register_blueprint(agents.blueprint)
blueprint.register_blueprint(assignments.blueprint)
blueprint.register_blueprint(events.blueprint)
blueprint.register_blueprint(notifications.blueprint)
