"""Probe responses: liveness and readiness."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field


class HealthOut(BaseModel):
    status: Literal["healthy"] = "healthy"
    timestamp: datetime
    version: str = Field(examples=["0.1.0"])
    service: str = Field(examples=["switchboard"])


class CheckOut(BaseModel):
    status: Literal["connected", "ok", "error", "timeout", "low"]
    latency_ms: float = Field(examples=[1.2])
    available_gb: float | None = None


class ReadinessOut(BaseModel):
    # "draining": the instance is shutting down; load balancers should stop sending it requests.
    status: Literal["ready", "not_ready", "draining"]
    timestamp: datetime
    checks: dict[str, CheckOut] = Field(
        examples=[
            {
                "database": {"status": "connected", "latency_ms": 1.4},
                "disk_space": {"status": "ok", "latency_ms": 0.1, "available_gb": 41.2},
            }
        ]
    )
