"""The garbage collector of a serving worker (service/heap.py): startup's heap frozen out of reach."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from service import create_app, heap

from .conftest import make_settings


@pytest.fixture
def collector() -> Iterator[None]:
    """The test process's collector as it was, whatever the test did to it."""
    threshold = gc.get_threshold()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)


async def test_a_served_app_freezes_what_startup_loaded(database_url: str, collector: None) -> None:
    app = create_app(make_settings(database_url, app_env="development"))
    loaded = ["alive before serving started"]
    async with app.test_app():
        later = ["made once the app was serving"]
        walked = gc.get_objects()  # every generation the collector walks; the frozen one is not among them
        assert not any(item is loaded for item in walked)
        assert any(item is later for item in walked)
        assert gc.get_threshold()[0] == heap.YOUNG_THRESHOLD


async def test_a_test_app_leaves_the_collector_alone(database_url: str, collector: None) -> None:
    threshold = gc.get_threshold()
    app = create_app(make_settings(database_url))
    async with app.test_app():
        assert gc.get_freeze_count() == 0
        assert gc.get_threshold() == threshold
