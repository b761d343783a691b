"""Imports every model module so `Model.metadata` is complete for Alembic and the drift test."""

from __future__ import annotations

from service.models import audit, sessions, users  # noqa: F401 - imported for their tables
from service.models.entity import Model

metadata = Model.metadata
