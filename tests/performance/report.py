"""What a benchmark run prints and appends to docs/benchmarks.md: the machine, the date, the revision and
one table per measurement."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from .servers import ROOT

DOCUMENT = ROOT / "docs" / "benchmarks.md"


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.partition(":")[2].strip()
    return "unknown CPU"


def _revision(checkout: Path) -> str:
    done = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=checkout, capture_output=True, text=True, check=False
    )
    return done.stdout.strip() or "unknown"


def machine(checkout: Path = ROOT) -> str:
    """One line: cores, CPU, revision (dirty trees are common while working: say so), date and load.

    `--no-optional-locks`: others commit in this working tree; a status must not take the index lock.
    """
    dirty = subprocess.run(
        ["git", "--no-optional-locks", "status", "--porcelain", "--untracked-files=no"],
        cwd=checkout,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    revision = _revision(checkout) + (" + uncommitted changes" if dirty else "")
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    # Others share the machine: its load when the benchmark starts says how much of it was ours.
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    return f"{os.cpu_count()} cores, {_cpu_model()}, {revision}, {when}, load average {load}"


def ms(value: float) -> str:
    return f"{value:.1f}"


@dataclass
class Report:
    """One benchmark's section of results: printed as it grows, appended to the document at the end."""

    title: str
    compared: str = ""
    lines: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.lines.append(f"### {self.title}")
        self.lines.append("")
        self.lines.append(f"Machine: {machine()}.{self.compared}")
        self.lines.append("")
        print("\n".join(self.lines), flush=True)

    def table(self, headers: list[str], rows: list[list[str]]) -> None:
        block = [
            "| " + " | ".join(headers) + " |",
            "|" + "|".join("---" for _ in headers) + "|",
            *("| " + " | ".join(row) + " |" for row in rows),
            "",
        ]
        self.lines.extend(block)
        print("\n".join(block), flush=True)

    def note(self, text: str) -> None:
        self.lines.extend([text, ""])
        print(text + "\n", flush=True)

    def append_to_document(self) -> None:
        with DOCUMENT.open("a") as document:
            document.write("\n" + "\n".join(self.lines))
