"""What one `python -m tests.performance` run was asked for: backends, rounds, and what to compare."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from . import servers
from .servers import App, Backends


@dataclass(frozen=True)
class Plan:
    backends: Backends
    rounds: int = 2
    # Another checkout whose service runs alternately with this one's (COMPARE=/path in the Makefile).
    compare: Path | None = None
    # The SSE scale part connects 10,100 streams per side and round, minutes on a loaded machine.
    scale_rounds: int = 1

    def services(self) -> list[App]:
        """The service of this checkout, and first, when comparing, the other checkout's."""
        if self.compare is None:
            return [servers.service()]
        return [servers.service(self.compare, "base"), servers.service(label="this")]

    @property
    def compared(self) -> str:
        if self.compare is None:
            return ""
        from .report import machine

        return f" Compared with the checkout at {self.compare} ({machine(self.compare)})."
