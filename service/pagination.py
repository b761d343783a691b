"""One page of a query, and the total it was cut from."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Select, func, select
from sqlalchemy.ext.asyncio import AsyncSession

T = TypeVar("T")


class PageQuery(BaseModel):
    """`page` and `per_page`, shared by every list endpoint's query schema."""

    model_config = ConfigDict(extra="forbid")

    page: int = Field(default=1, ge=1, le=100_000)
    per_page: int = Field(default=20, ge=1, le=100)


async def fetch_page(
    session: AsyncSession, query: Select[T], page: int, per_page: int
) -> tuple[Sequence[T], int]:
    """The rows of `page` (1-based) and the number of rows the whole query matches."""
    counted = select(func.count()).select_from(query.order_by(None).subquery())
    total = (await session.execute(counted)).scalar_one()
    rows = (await session.execute(query.offset((page - 1) * per_page).limit(per_page))).scalars().all()
    return rows, int(total)
