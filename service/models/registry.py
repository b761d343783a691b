"""Imports every model module so `Model.metadata` is complete for Alembic and the drift test."""

from __future__ import annotations

from service.models import agents, assignments, audit, events, notifications, sessions, users  # noqa: F401
from service.models.entity import Model

metadata = Model.metadata
