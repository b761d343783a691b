"""Users, roles and the link between them."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, Column, ForeignKey, Index, String, Table, func
from sqlalchemy.orm import Mapped, mapped_column, relationship

from service.models.entity import Entity, Model

user_roles = Table(
    "user_roles",
    Model.metadata,
    Column("user_id", ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    Column("role_id", ForeignKey("roles.id", ondelete="CASCADE"), primary_key=True),
)


class Role(Entity, Model):
    __tablename__ = "roles"

    name: Mapped[str] = mapped_column(String(40), unique=True)
    description: Mapped[str] = mapped_column(String(200), default="")
    permissions: Mapped[list[str]] = mapped_column(default=list)


class User(Entity, Model):
    __tablename__ = "users"
    username: Mapped[str] = mapped_column(String(80))
    email: Mapped[str] = mapped_column(String(254))
    password_hash: Mapped[str] = mapped_column(String(255))
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    email_verified_at: Mapped[datetime | None] = mapped_column(default=None)
    roles: Mapped[list[Role]] = relationship(secondary=user_roles, lazy="selectin")

    @property
    def role_names(self) -> list[str]:
        return sorted(role.name for role in self.roles)

    @property
    def permissions(self) -> frozenset[str]:
        return frozenset(p for role in self.roles for p in role.permissions)

    def __repr__(self) -> str:
        return f"User(id={self.id}, username={self.username!r})"


# Unique among live users only, case-insensitively: a deleted user's name and email can be used again.
for _column in (User.username, User.email):
    Index(
        f"uq_users_{_column.key}_live",
        func.lower(_column),
        unique=True,
        postgresql_where=User.deleted_at.is_(None),
        sqlite_where=User.deleted_at.is_(None),
    )
