"""Accounts: registration, login, tokens and the user object."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, EmailStr, Field

if TYPE_CHECKING:
    from service.models.users import User

USERNAME_PATTERN = r"^[A-Za-z0-9_.\-]{3,80}$"


class RegisterIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    username: str = Field(pattern=USERNAME_PATTERN, examples=["ada_l"])
    email: EmailStr = Field(max_length=254, examples=["ada@example.com"])
    password: str = Field(min_length=1, max_length=1024, examples=["Correct-Horse-42"])


class LoginIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    username: str = Field(min_length=1, max_length=254, description="The username or the email address.")
    password: str = Field(min_length=1, max_length=1024)


class RefreshIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    refresh_token: str = Field(min_length=1, max_length=4096)


class TokenPairOut(BaseModel):
    access_token: str
    refresh_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int = Field(description="Seconds until the access token expires.", examples=[3600])


class UserOut(BaseModel):
    """A user as the API shows it: never a password hash or a token."""

    id: uuid.UUID
    username: str
    email: str
    is_active: bool
    roles: list[str]
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_user(cls, user: User) -> UserOut:
        return cls(
            id=user.id,
            username=user.username,
            email=user.email,
            is_active=user.is_active,
            roles=user.role_names,
            created_at=user.created_at,
            updated_at=user.updated_at,
        )


class MeOut(UserOut):
    permissions: list[str]
    email_verified: bool

    @classmethod
    def from_user(cls, user: User) -> MeOut:
        return cls(
            **UserOut.from_user(user).model_dump(),
            permissions=sorted(user.permissions),
            email_verified=user.email_verified_at is not None,
        )
