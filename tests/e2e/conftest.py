"""A failing end-to-end test shows the end of its server's log: the browser sees only the response, and
the cause (a refused connection, a 503's dependency error) is in the server's lines."""

from __future__ import annotations

from collections.abc import Generator

import pytest

SHOWN_LINES = 60


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    server = getattr(item, "funcargs", {}).get("server")
    output = getattr(server, "output", None)
    if report.failed and callable(output):
        lines = output().splitlines()[-SHOWN_LINES:]
        report.sections.append((f"server log (last {len(lines)} lines)", "\n".join(lines)))
    return report
