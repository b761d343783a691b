"""Accounts: registration, login, tokens and the user object."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, EmailStr, Field

from service.pagination import PageQuery

if TYPE_CHECKING:
    from service.models.users import User

USERNAME_PATTERN = r"^[A-Za-z0-9_.\-]{3,80}$"
USERNAME_MAX = 80
RoleName = Annotated[str, Field(min_length=1, max_length=40)]
# Long enough for any sane passphrase; the policy (8-128) is checked by the service with named rules.
PASSWORD_MAX = 1024
Sort = Literal["created_at", "-created_at", "username", "-username", "email", "-email"]

# Realistic values for the OpenAPI document's examples (they change nothing at run time).
USER_EXAMPLE: dict[str, Any] = {
    "id": "9c3b5e1a-72d4-4f08-b1e6-0a5d8c2f7b93",
    "username": "ada_l",
    "email": "ada@example.com",
    "is_active": True,
    "roles": ["operator"],
    "created_at": "2026-02-20T10:31:09.826000Z",
    "updated_at": "2026-03-01T17:45:22.130000Z",
    "deleted_at": None,
}
MAIL_TOKEN_EXAMPLE = "sbm_J6tY1rW8eQ3zX5cV0bN7mK2aS9dF4gH1jL6pO0iU3yT"


class RegisterIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"username": "ada_l", "email": "ada@example.com", "password": "Correct-Horse-42"}]
        },
    )

    username: str = Field(pattern=USERNAME_PATTERN, max_length=USERNAME_MAX, examples=["ada_l"])
    email: EmailStr = Field(max_length=254, examples=["ada@example.com"])
    password: str = Field(min_length=1, max_length=PASSWORD_MAX, examples=["Correct-Horse-42"])


class LoginIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"username": "ada_l", "password": "Correct-Horse-42"}]},
    )

    username: str = Field(min_length=1, max_length=254, description="The username or the email address.")
    password: str = Field(min_length=1, max_length=PASSWORD_MAX)


class RefreshIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"refresh_token": "sbr_T5gH2jK8lZ0xC4vB7nM1qW9eR3tY6uI2oP5aS8dF1gJ"}]
        },
    )

    refresh_token: str = Field(min_length=1, max_length=4096)


class UserCreateIn(BaseModel):
    """An account made by an admin: roles and activity may be set at once."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "username": "grace_h",
                    "email": "grace@example.com",
                    "password": "Battery-Staple-77",
                    "roles": ["operator"],
                    "is_active": True,
                }
            ]
        },
    )

    username: str = Field(pattern=USERNAME_PATTERN, max_length=USERNAME_MAX, examples=["grace_h"])
    email: EmailStr = Field(max_length=254, examples=["grace@example.com"])
    password: str = Field(min_length=1, max_length=PASSWORD_MAX, examples=["Correct-Horse-42"])
    roles: list[RoleName] | None = Field(
        default=None,
        max_length=10,
        description="Role names; the default role when omitted.",
        examples=[["operator"]],
    )
    is_active: bool = Field(default=True, strict=True)


class UserPatchIn(BaseModel):
    """Fields to change; those left out keep their value.

    Anyone may change their own username, email and password (the last two need `current_password`);
    only admins may change `roles`, `is_active` or another user.
    """

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"email": "ada.lovelace@example.com", "current_password": "Correct-Horse-42"}]
        },
    )

    username: str | None = Field(default=None, pattern=USERNAME_PATTERN, max_length=USERNAME_MAX)
    email: EmailStr | None = Field(default=None, max_length=254)
    password: str | None = Field(default=None, min_length=1, max_length=PASSWORD_MAX)
    current_password: str | None = Field(
        default=None,
        min_length=1,
        max_length=PASSWORD_MAX,
        description="Required to change your own email or password.",
    )
    roles: list[RoleName] | None = Field(default=None, max_length=10, examples=[["viewer"]])
    is_active: bool | None = Field(default=None, strict=True)


class UserPutIn(UserPatchIn):
    """The whole editable user: username and email are required."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"username": "ada_l", "email": "ada@example.com", "roles": ["operator"], "is_active": True}
            ]
        }
    )

    username: str = Field(pattern=USERNAME_PATTERN, max_length=USERNAME_MAX)
    email: EmailStr = Field(max_length=254)


class UserQuery(PageQuery):
    q: str | None = Field(default=None, max_length=100, description="Part of the username or email.")
    role: str | None = Field(default=None, max_length=40)
    is_active: bool | None = None
    include_deleted: bool = Field(default=False, description="Admins only: include soft-deleted users.")
    sort: Sort = "-created_at"


class ForgotPasswordIn(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"email": "ada@example.com"}]})

    email: EmailStr = Field(max_length=254)


class ResetPasswordIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"token": MAIL_TOKEN_EXAMPLE, "password": "Quiet-Meadow-58"}]},
    )

    token: str = Field(min_length=1, max_length=512)
    password: str = Field(min_length=1, max_length=PASSWORD_MAX)


class VerifyEmailIn(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"token": MAIL_TOKEN_EXAMPLE}]})

    token: str = Field(min_length=1, max_length=512)


class TokenPairOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "access_token": (
                        "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiI5YzNiNWUxYS03MmQ0LTRmMDgtYjFlNi0wYTVk"
                        "OGMyZjdiOTMiLCJzaWQiOiIyYjdkNGY5MC02ZTFhLTRjMzgtOWQ1Mi04ZjBlM2E3YzFiNjQiLCJ0eXAiOiJh"
                        "Y2Nlc3MiLCJpYXQiOjE3NzI0NDI0NDcsImV4cCI6MTc3MjQ0NjA0N30.2mJ0Cq7S1cZb8vXy4TfKdP0aRw9L"
                        "hE3nQ6uG5oB1sVk"
                    ),
                    "refresh_token": "sbr_T5gH2jK8lZ0xC4vB7nM1qW9eR3tY6uI2oP5aS8dF1gJ",
                    "token_type": "bearer",
                    "expires_in": 3600,
                }
            ]
        }
    )

    access_token: str
    refresh_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int = Field(description="Seconds until the access token expires.", examples=[3600])


class UserOut(BaseModel):
    """A user as the API shows it: never a password hash or a token."""

    model_config = ConfigDict(json_schema_extra={"examples": [USER_EXAMPLE]})

    id: uuid.UUID
    username: str
    email: str
    is_active: bool
    roles: list[str]
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None = Field(
        description="Set when the user was soft-deleted (admins only see these)."
    )

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
            deleted_at=user.deleted_at,
        )


class MeOut(UserOut):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    **USER_EXAMPLE,
                    "permissions": [
                        "agents:read",
                        "agents:write",
                        "assignments:read",
                        "assignments:write",
                        "events:read",
                        "users:read",
                    ],
                    "email_verified": True,
                }
            ]
        }
    )

    permissions: list[str]
    email_verified: bool

    @classmethod
    def from_user(cls, user: User) -> MeOut:
        return cls(
            **UserOut.from_user(user).model_dump(),
            permissions=sorted(user.permissions),
            email_verified=user.email_verified_at is not None,
        )
