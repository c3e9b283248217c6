"""`NodeReport`: what an agent says about its node, at `{root}/status/nodes/{project}/{name}`.

The shape is the contract of docs/architecture.md ("Nodes: spec from operators, status from
agents"): camelCase JSON, written compact by the agent and merged into the Node's `status` by the
API. Readers ignore fields they do not know, so a newer agent never breaks an older API.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from infermesh.model import EnvironmentKind, NodeClass, NodeSpec

ConditionType = Literal["Ready", "Cordoned", "Draining", "Drained", "Quarantined"]
CONDITION_TYPES: tuple[ConditionType, ...] = (
    "Ready",
    "Cordoned",
    "Draining",
    "Drained",
    "Quarantined",
)
RuntimeKind = Literal["vllm", "sglang", "tgi"]


class _Part(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class AgentInfo(_Part):
    address: str | None = None  # host:port of the agent's own /metrics and /healthz
    version: str
    startedAt: datetime
    leaseTtlSeconds: int


class Facts(_Part):
    """What the node is: its NodeClass's hardware and environment, overridden by agent flags."""

    nodeClass: str | None = None
    gpu: str | None = None
    gpuCount: int = 0
    vramGB: float | None = None  # per GPU
    mig: bool = False
    nvlink: bool = False
    environment: EnvironmentKind | None = None
    provider: str | None = None
    region: str | None = None
    zone: str | None = None
    domain: str | None = None
    linkClasses: list[str] = Field(default_factory=list)
    spot: bool = False
    residency: str | None = None
    pricePerGpuHour: float | None = None

    @classmethod
    def from_node_class(cls, node_class: NodeClass) -> Facts:
        spec = node_class.spec
        hw, env = spec.hardware, spec.environment
        return cls(
            nodeClass=node_class.metadata.name,
            gpu=hw.gpu,
            gpuCount=hw.gpuCount,
            vramGB=hw.vramGB,
            mig=hw.mig == "enabled",
            nvlink=hw.nvlink,
            environment=env.kind,
            provider=env.provider,
            region=env.region,
            zone=env.zone,
            linkClasses=list(spec.network.linkClasses),
            spot=spec.constraints.spot,
            residency=spec.constraints.residency,
        )


class GpuReading(_Part):
    index: int
    uuid: str
    name: str
    utilPct: float
    memUsedMiB: int
    memTotalMiB: int
    tempC: float
    powerW: float
    powerLimitW: float
    eccVolatileSbe: int = 0
    eccVolatileDbe: int = 0
    throttleReasons: list[str] = Field(default_factory=list)
    migProfile: str | None = None  # the MIG instances' profiles, e.g. "1g.10gb,3g.40gb"


class RuntimeReading(_Part):
    """The serving runtime as last scraped. Numbers are None when the runtime does not expose
    them (TGI has no KV-cache gauge) or when there was nothing to measure (no requests)."""

    kind: RuntimeKind
    url: str
    healthy: bool
    models: list[str] = Field(default_factory=list)
    running: int = 0
    waiting: int = 0
    kvCacheUsage: float | None = None  # 0..1
    promptTokensPerS: float | None = None
    generationTokensPerS: float | None = None
    ttftP50Ms: float | None = None
    itlP50Ms: float | None = None
    errorRatio: float | None = None  # failed / all requests over the last minute


class ReportCondition(_Part):
    type: ConditionType
    status: Literal["True", "False", "Unknown"]
    reason: str = ""
    message: str = ""
    actor: str = ""
    lastTransitionTime: datetime | None = None


class NodeReport(_Part):
    agent: AgentInfo
    facts: Facts
    gpus: list[GpuReading] = Field(default_factory=list)
    runtime: RuntimeReading | None = None  # None: the agent watches no runtime
    inFlight: int = 0
    conditions: list[ReportCondition] = Field(default_factory=list)
    heartbeat: datetime
    observedGeneration: int | None = None  # of the Node object; None while there is none

    def condition(self, type_: ConditionType) -> ReportCondition | None:
        return next((c for c in self.conditions if c.type == type_), None)

    def is_true(self, type_: ConditionType) -> bool:
        cond = self.condition(type_)
        return cond is not None and cond.status == "True"

    def to_json(self) -> bytes:
        """Compact JSON, as stored in etcd."""
        return self.model_dump_json().encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> NodeReport:
        return cls.model_validate_json(data)


@dataclass(frozen=True, slots=True)
class Availability:
    """Whether new work may land on a node, as its report and its Node object say together."""

    ready: bool
    cordoned: bool
    draining: bool
    quarantined: bool

    @property
    def schedulable(self) -> bool:
        return self.ready and not (self.cordoned or self.draining or self.quarantined)


def availability(report: Mapping[str, Any], spec: NodeSpec | None) -> Availability:
    """Operator intent in the Node object (cordon, drain, quarantine) counts at once, before the
    agent has acted on it and reported the condition."""
    conditions = {c.get("type"): c.get("status") for c in report.get("conditions") or []}
    return Availability(
        ready=conditions.get("Ready") == "True",
        cordoned=conditions.get("Cordoned") == "True" or bool(spec is not None and spec.cordoned),
        draining=conditions.get("Draining") == "True"
        or conditions.get("Drained") == "True"
        or bool(spec is not None and spec.drain is not None),
        quarantined=conditions.get("Quarantined") == "True"
        or bool(spec is not None and spec.quarantine is not None),
    )
