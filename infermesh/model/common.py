"""Parts several kinds share: link classes, SLOs, strategy refs, drain and quarantine records."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import Field

from infermesh.model.meta import Name, StrictModel

LinkClass = Literal["intra-zone", "inter-zone", "inter-region", "public"]

EnvironmentKind = Literal["device", "edge", "cloud"]

Percent = Annotated[int, Field(ge=0, le=100)]
PositiveMs = Annotated[float, Field(gt=0)]


class Slo(StrictModel):
    """Inference latency targets (seed: `slo: { p95_ms: 300, ttft_ms: 120 }`)."""

    p95_ms: PositiveMs | None = None
    p99_ms: PositiveMs | None = None
    ttft_ms: PositiveMs | None = None
    # Percent of requests that must succeed, e.g. 99.9; the rest is the error budget.
    availability: Annotated[float, Field(gt=0, le=100)] | None = None


class StrategyRef(StrictModel):
    """`strategy: { ref: "hybrid_mesh@1.0", params: {...} }`; params override the Strategy's."""

    ref: Name
    params: dict[str, Any] = Field(default_factory=dict)


class DrainRequest(StrictModel):
    """Stop sending new work; let running work finish within timeoutSeconds."""

    reason: str = ""
    actor: str = ""
    requestedAt: datetime | None = None
    timeoutSeconds: int = Field(300, ge=0)


class QuarantineRecord(StrictModel):
    """Why and by whom something was taken out of service."""

    reason: str = ""
    actor: str = ""
    since: datetime | None = None
