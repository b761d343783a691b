"""List queries: one page of a query and the total it was cut from, the sort keys clients name, and
the "contains" text filter."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import ColumnElement, Select, SQLColumnExpression, func, select
from sqlalchemy.ext.asyncio import AsyncSession

T = TypeVar("T")


class PageQuery(BaseModel):
    """`page` and `per_page`, shared by every list endpoint's query schema."""

    model_config = ConfigDict(extra="forbid")

    page: int = Field(default=1, ge=1, le=100_000)
    per_page: int = Field(default=20, ge=1, le=100)


def contains(column: SQLColumnExpression[str], text: str) -> ColumnElement[bool]:
    """`column` holds `text`, ignoring case, with `%` and `_` in `text` taken literally."""
    escaped = text.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return func.lower(column).like(f"%{escaped}%", escape="\\")


def sort_order(columns: Mapping[str, ColumnElement[Any]], sort: str) -> ColumnElement[Any]:
    """The ORDER BY term for a sort key such as `name` or `-created_at` (descending)."""
    column = columns[sort.removeprefix("-")]
    return column.desc() if sort.startswith("-") else column.asc()


async def fetch_page(
    session: AsyncSession, query: Select[T], page: int, per_page: int
) -> tuple[Sequence[T], int]:
    """The rows of `page` (1-based) and the number of rows the whole query matches.

    One statement: the total rides along each row as an uncorrelated scalar subquery, which the database
    computes once (a statement costs the worker as much CPU as serving a small request). Not a window
    count (`count(*) OVER ()`), which would make the database sort every matching row instead of the
    top of them. A page past the end has no row to carry the total, and only then is it counted apart.
    """
    counted = select(func.count()).select_from(query.order_by(None).subquery())
    paged = query.add_columns(counted.scalar_subquery().label("total"))
    found = (await session.execute(paged.offset((page - 1) * per_page).limit(per_page))).all()
    if found:
        return [row[0] for row in found], int(found[0][1])
    total = 0 if page == 1 else (await session.execute(counted)).scalar_one()
    return [], int(total)
