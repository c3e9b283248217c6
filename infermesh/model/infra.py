"""Where work can run: Domain, NodeClass, CapacityPool, Node, and the Project tenancy record."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import ConfigDict, Field

from infermesh.model.common import (
    DrainRequest,
    EnvironmentKind,
    LinkClass,
    PositiveMs,
    QuarantineRecord,
)
from infermesh.model.meta import Name, Resource, Status, StrictModel

NonNegative = Annotated[float, Field(ge=0)]
Toggle = Literal["enabled", "disabled"]


# Domain ------------------------------------------------------------------------------------


class DomainScope(StrictModel):
    """Which capacity the domain spans; entries may be globs (`eu-west/*`)."""

    cells: list[str] = Field(default_factory=list)
    regions: list[str] = Field(default_factory=list)
    zones: list[str] = Field(default_factory=list)
    environments: list[EnvironmentKind] = Field(default_factory=list)


class NetPolicy(StrictModel):
    allowLinkClasses: list[LinkClass] = Field(default_factory=list)
    rttBudgetMs: PositiveMs | None = None
    bandwidthBudgetMbps: Annotated[float, Field(gt=0)] | None = None


class Residency(StrictModel):
    region: str | None = None
    privacy: str | None = None


class DomainSpec(StrictModel):
    scope: DomainScope = Field(default_factory=DomainScope)
    netPolicy: NetPolicy = Field(default_factory=NetPolicy)
    residency: Residency = Field(default_factory=Residency)


class Domain(Resource):
    """An inference execution space: placement scope, network budget, security boundary."""

    plural = "domains"
    aliases = ("dom",)
    kind: Literal["Domain"] = "Domain"
    spec: DomainSpec = Field(default_factory=DomainSpec)


# NodeClass ---------------------------------------------------------------------------------


class Hardware(StrictModel):
    gpu: str | None = None  # e.g. H100-80G; None for CPU-only devices
    gpuCount: int = Field(1, ge=0)  # GPUs per node
    vramGB: NonNegative | None = None  # per GPU
    mig: Toggle = "disabled"
    mps: Toggle = "disabled"
    nvlink: bool = False
    infiniband: bool = False
    cpuCores: int | None = Field(None, ge=1)
    memoryGB: NonNegative | None = None


class Environment(StrictModel):
    kind: EnvironmentKind
    provider: str | None = None
    region: str | None = None
    zone: str | None = None


class NodeNetwork(StrictModel):
    linkClasses: list[LinkClass] = Field(default_factory=list)
    rttBudgetMs: PositiveMs | None = None
    # Network coordinates (Vivaldi-style) from which strategies estimate RTT between nodes.
    coordinates: list[float] | None = None


class NodeConstraints(StrictModel):
    spot: bool = False
    residency: str | None = None
    powerCapW: Annotated[float, Field(gt=0)] | None = None


class NodeClassSpec(StrictModel):
    hardware: Hardware
    environment: Environment
    network: NodeNetwork = Field(default_factory=NodeNetwork)
    constraints: NodeConstraints = Field(default_factory=NodeConstraints)


class NodeClass(Resource):
    """A category of nodes by capability and policy."""

    plural = "nodeclasses"
    aliases = ("nc",)
    kind: Literal["NodeClass"] = "NodeClass"
    spec: NodeClassSpec


# CapacityPool ------------------------------------------------------------------------------


class CapacityPoolSpec(StrictModel):
    sloClass: str | None = None  # gold, silver, ...
    quotaGpuHours: NonNegative | None = None
    budgetUSD: NonNegative | None = None
    maxGpus: int | None = Field(None, ge=0)  # GPUs in use at once
    nodeClasses: list[Name] = Field(default_factory=list)
    domains: list[Name] = Field(default_factory=list)


class CapacityPool(Resource):
    """Capacity with accounting: quota, budget and SLO class, drawn on by endpoints and jobs."""

    plural = "capacitypools"
    aliases = ("pool", "pools", "cp")
    kind: Literal["CapacityPool"] = "CapacityPool"
    spec: CapacityPoolSpec = Field(default_factory=CapacityPoolSpec)


# Node --------------------------------------------------------------------------------------


class NodeDrain(DrainRequest):
    force: bool = False  # evict work still running when the timeout ends


class NodeSpec(StrictModel):
    nodeClassRef: Name
    domain: Name | None = None
    region: str | None = None
    zone: str | None = None
    address: str | None = None  # host:port of the node's agent
    cordoned: bool = False  # no new work is placed here
    drain: NodeDrain | None = None
    quarantine: QuarantineRecord | None = None


class NodeStatus(Status):
    # Agent telemetry (GPUs, runtimes, ...) is defined by the agent; keep what it reports.
    model_config = ConfigDict(extra="allow")


class Node(Resource):
    """One machine of the fleet; agents register it and report its status."""

    plural = "nodes"
    aliases = ("no",)
    kind: Literal["Node"] = "Node"
    spec: NodeSpec
    status: NodeStatus = Field(default_factory=NodeStatus)


# Project -----------------------------------------------------------------------------------


class ProjectSpec(StrictModel):
    tenant: Name = "default"
    organization: Name = "default"


class Project(Resource):
    """The tenancy record: Organization → Tenant → Project."""

    plural = "projects"
    aliases = ("proj",)
    cluster_scoped = True
    kind: Literal["Project"] = "Project"
    spec: ProjectSpec = Field(default_factory=ProjectSpec)
