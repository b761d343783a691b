"""The response shapes every endpoint shares: success, page and error envelopes."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any, Generic, Literal, Self, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from service import request_ids
from service.pagination import PageQuery

T = TypeVar("T")

# Realistic values for the OpenAPI document's examples (they change nothing at run time).
METADATA_EXAMPLE: dict[str, Any] = {
    "timestamp": "2026-03-02T09:14:07.512000Z",
    "request_id": "3d8db43ef1f94d8a8a861a7087dd3c00",
}
PAGINATION_EXAMPLE: dict[str, Any] = {
    "page": 1,
    "per_page": 20,
    "total_pages": 5,
    "total_items": 93,
    "has_next": True,
    "has_prev": False,
}


def _now() -> datetime:
    return datetime.now(UTC)


class Metadata(BaseModel):
    """When the response was made and the id of the request it answers (also the X-Request-ID header)."""

    model_config = ConfigDict(json_schema_extra={"examples": [METADATA_EXAMPLE]})

    timestamp: datetime = Field(default_factory=_now)
    request_id: str | None = Field(default_factory=request_ids.current)


class Success(BaseModel, Generic[T]):
    """A successful response carrying one object."""

    status: Literal["success"] = "success"
    data: T
    message: str | None = None
    metadata: Metadata = Field(default_factory=Metadata)


class Pagination(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [PAGINATION_EXAMPLE]})

    page: int = Field(ge=1, examples=[1])
    per_page: int = Field(ge=1, examples=[20])
    total_pages: int = Field(ge=0, examples=[5])
    total_items: int = Field(ge=0, examples=[93])
    has_next: bool
    has_prev: bool

    @classmethod
    def of(cls, page: int, per_page: int, total_items: int) -> Pagination:
        total_pages = math.ceil(total_items / per_page) if total_items else 0
        return cls(
            page=page,
            per_page=per_page,
            total_pages=total_pages,
            total_items=total_items,
            has_next=page < total_pages,
            has_prev=page > 1,
        )


class Page(BaseModel, Generic[T]):
    """A successful response carrying one page of a list."""

    status: Literal["success"] = "success"
    data: list[T]
    pagination: Pagination
    metadata: Metadata = Field(default_factory=Metadata)

    @classmethod
    def of(cls, items: list[T], query: PageQuery, total: int) -> Self:
        """The page `query` asked for, holding `items`, out of `total`."""
        return cls(data=items, pagination=Pagination.of(query.page, query.per_page, total))


class ErrorBody(BaseModel):
    code: str = Field(examples=["VALIDATION_ERROR"])
    message: str = Field(examples=["The request body is not valid."])
    details: dict[str, Any] | None = Field(
        default=None, examples=[{"email": ["value is not a valid email address"]}]
    )


class ErrorOut(BaseModel):
    """Every error the service returns, whatever its status."""

    model_config = ConfigDict(title="Error")

    status: Literal["error"] = "error"
    error: ErrorBody
    metadata: Metadata = Field(default_factory=Metadata)
