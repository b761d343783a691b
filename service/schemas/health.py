"""Probe responses: liveness and readiness."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class HealthOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "status": "healthy",
                    "timestamp": "2026-03-02T09:14:07.512000Z",
                    "version": "0.1.0",
                    "service": "switchboard",
                }
            ]
        }
    )

    status: Literal["healthy"] = "healthy"
    timestamp: datetime
    version: str = Field(examples=["0.1.0"])
    service: str = Field(examples=["switchboard"])


class CheckOut(BaseModel):
    status: Literal["connected", "ok", "error", "timeout", "low"]
    latency_ms: float = Field(examples=[1.2])
    available_gb: float | None = None


class ReadinessOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "status": "ready",
                    "timestamp": "2026-03-02T09:14:07.512000Z",
                    "checks": {
                        "database": {"status": "connected", "latency_ms": 1.4},
                        "redis": {"status": "connected", "latency_ms": 0.6},
                        "disk_space": {"status": "ok", "latency_ms": 0.1, "available_gb": 41.2},
                    },
                },
                {
                    "status": "degraded",
                    "timestamp": "2026-03-02T09:14:08.520000Z",
                    "checks": {
                        "database": {"status": "connected", "latency_ms": 1.3},
                        "redis": {"status": "timeout", "latency_ms": 1500.4},
                        "disk_space": {"status": "ok", "latency_ms": 0.1, "available_gb": 41.2},
                    },
                },
                {
                    "status": "not_ready",
                    "timestamp": "2026-03-02T09:14:09.530000Z",
                    "checks": {
                        "database": {"status": "timeout", "latency_ms": 2000.3},
                        "redis": {"status": "connected", "latency_ms": 0.7},
                        "disk_space": {"status": "ok", "latency_ms": 0.1, "available_gb": 41.2},
                    },
                },
            ]
        }
    )

    # "degraded": serving, with a dependency it can do without (Redis) down; "draining": the instance is
    # shutting down, and load balancers should stop sending it requests.
    status: Literal["ready", "degraded", "not_ready", "draining"]
    timestamp: datetime
    checks: dict[str, CheckOut] = Field(
        examples=[
            {
                "database": {"status": "connected", "latency_ms": 1.4},
                "disk_space": {"status": "ok", "latency_ms": 0.1, "available_gb": 41.2},
            }
        ]
    )
