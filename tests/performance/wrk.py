"""Running wrk (from Debian) with the cycling Lua script, and reading the numbers it prints."""

from __future__ import annotations

import asyncio
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent / "lua" / "cycle.lua"
_MARK = "BENCH_JSON "


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    bearer: str | None = None
    body: str | None = None

    def line(self) -> str:
        if self.body is not None and ("\t" in self.body or "\n" in self.body):
            raise ValueError("a request body for wrk must be one line without tabs")
        return f"{self.method}\t{self.path}\t{self.bearer or '-'}\t{self.body or '-'}"


@dataclass(frozen=True)
class Result:
    requests: int
    seconds: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    # Answers other than 2xx/3xx, and connect/read/write errors and timeouts.
    status_errors: int
    socket_errors: int

    @property
    def rate(self) -> float:
        """Successful requests per second."""
        return (self.requests - self.status_errors) / self.seconds


async def run(
    url: str,
    requests: list[Request],
    *,
    connections: int,
    seconds: float,
    threads: int = 2,
    delay_ms: int = 0,
    timeout_s: int = 10,
) -> Result:
    """wrk against `url` cycling over `requests`; runs in its own process, so the caller's loop stays free."""
    with tempfile.NamedTemporaryFile("w", suffix=".tsv", prefix="wrk-") as listing:
        listing.write("\n".join(request.line() for request in requests) + "\n")
        listing.flush()
        process = await asyncio.create_subprocess_exec(
            "wrk",
            *("-t", str(min(threads, connections)), "-c", str(connections), "-d", f"{seconds:.0f}s"),
            *("--timeout", f"{timeout_s}s", "-s", str(SCRIPT), url, "--", listing.name, str(delay_ms)),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await process.communicate()
    text = out.decode(errors="replace")
    for line in text.splitlines():
        if line.startswith(_MARK):
            raw = json.loads(line.removeprefix(_MARK))
            return Result(
                requests=raw["requests"],
                seconds=raw["duration_us"] / 1e6,
                p50_ms=raw["p50_us"] / 1000,
                p90_ms=raw["p90_us"] / 1000,
                p99_ms=raw["p99_us"] / 1000,
                max_ms=raw["max_us"] / 1000,
                status_errors=raw["status_errors"],
                socket_errors=raw["socket_errors"],
            )
    raise RuntimeError(f"wrk printed no result:\n{text[-2000:]}\n{err.decode(errors='replace')[-2000:]}")
