"""The permission catalogue and the built-in roles (seeded by migration 0002)."""

from __future__ import annotations

USERS_READ = "users:read"
USERS_WRITE = "users:write"
AGENTS_READ = "agents:read"
AGENTS_WRITE = "agents:write"
ASSIGNMENTS_READ = "assignments:read"
ASSIGNMENTS_WRITE = "assignments:write"
EVENTS_READ = "events:read"
AUDIT_READ = "audit:read"

ALL = frozenset(
    {
        USERS_READ,
        USERS_WRITE,
        AGENTS_READ,
        AGENTS_WRITE,
        ASSIGNMENTS_READ,
        ASSIGNMENTS_WRITE,
        EVENTS_READ,
        AUDIT_READ,
    }
)

ADMIN = "admin"
OPERATOR = "operator"
VIEWER = "viewer"
DEFAULT_ROLE = VIEWER
