"""What runs on the mesh: Model (artifacts), Endpoint (inference), Job (training)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Annotated, Literal

from pydantic import ConfigDict, Field, model_validator

from infermesh.model.common import (
    DrainRequest,
    Percent,
    PositiveMs,
    QuarantineRecord,
    Slo,
    StrategyRef,
)
from infermesh.model.meta import Loc, Name, Resource, Status, StrictModel, raise_problems

Runtime = Literal["vllm", "tgi", "sglang", "triton", "tensorrt-llm", "llama.cpp"]
ArtifactType = Literal["oci", "hf", "s3", "gcs", "http", "tensorrt", "local"]
Positive = Annotated[float, Field(gt=0)]


def _duplicates(values: Iterable[str]) -> list[str]:
    return [value for value, count in Counter(values).items() if count > 1]


# Model -------------------------------------------------------------------------------------


class RuntimeRequirements(StrictModel):
    name: Runtime
    version: str | None = None  # e.g. ">=0.6"
    minVramGB: Positive | None = None  # per GPU
    gpuTypes: list[str] = Field(default_factory=list)  # empty: any
    gpusPerReplica: int = Field(1, ge=1)


class Artifact(StrictModel):
    type: ArtifactType
    uri: str = Field(min_length=1)


class KVCachePolicy(StrictModel):
    prefixCaching: bool = True
    offload: Literal["none", "cpu", "disk"] = "none"
    maxTokens: int | None = Field(None, ge=1)


class ModelSpec(StrictModel):
    revision: str | None = None  # taken from the name when it is `name@rev`
    quant: str | None = None  # q4_k_m, fp8, awq, ...
    runtime: RuntimeRequirements | None = None
    vramGB: Positive | None = None  # footprint of one replica
    contextLength: int | None = Field(None, ge=1)
    artifacts: list[Artifact] = Field(default_factory=list)
    tokenizer: str | None = None
    kvCachePolicy: KVCachePolicy | None = None
    warmupScript: str | None = None
    published: bool = False  # set by `:publish`


class Model(Resource):
    """A model revision and its artifacts, named `name@rev` by convention."""

    plural = "models"
    aliases = ("mo",)
    kind: Literal["Model"] = "Model"
    spec: ModelSpec = Field(default_factory=ModelSpec)

    @model_validator(mode="after")
    def _revision_matches_name(self) -> Model:
        _, at, rev = self.metadata.name.partition("@")
        if not at:
            return self
        if self.spec.revision is None:
            self.spec.revision = rev
        elif self.spec.revision != rev:
            raise_problems(
                "Model",
                [
                    (
                        ("spec", "revision"),
                        f"revision {self.spec.revision!r} differs from the name's {rev!r}; "
                        f"drop spec.revision or rename the model",
                    )
                ],
            )
        return self


# Endpoint ----------------------------------------------------------------------------------


class EndpointDomain(StrictModel):
    name: Name
    weight: Percent = 100  # percent of the endpoint's traffic
    slo: Slo | None = None  # overrides the endpoint's SLO in this domain
    kvCachePolicy: KVCachePolicy | None = None
    prewarm: bool = False  # keep a warm replica here even without traffic


class TrafficSplitEntry(StrictModel):
    modelRef: Name
    weight: Percent


class Pin(StrictModel):
    """Placement pin: serve only from this node, or only from this domain."""

    node: Name | None = None
    domain: Name | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Pin:
        if (self.node is None) == (self.domain is None):
            raise_problems("Pin", [((), "set exactly one of node or domain")])
        return self


class Auth(StrictModel):
    required: bool = True  # secure by default: invoking needs a token
    audience: list[str] = Field(default_factory=list)


class QuarantinedNode(QuarantineRecord):
    node: Name


class EndpointSpec(StrictModel):
    modelRef: Name
    domains: list[EndpointDomain] = Field(min_length=1)
    slo: Slo | None = None
    strategy: StrategyRef | None = None  # None: the router's default strategy
    capacityPoolRef: Name | None = None
    auth: Auth = Field(default_factory=Auth)
    # Desired state set by actions (`:trafficSplit`, `:pin`, `:drain`, `:quarantine`).
    trafficSplit: list[TrafficSplitEntry] = Field(default_factory=list)
    pins: list[Pin] = Field(default_factory=list)
    drain: DrainRequest | None = None
    quarantinedNodes: list[QuarantinedNode] = Field(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self) -> EndpointSpec:
        raise_problems("EndpointSpec", self._problems())
        return self

    def _problems(self) -> Iterator[tuple[Loc, str]]:
        names = [d.name for d in self.domains]
        for name in _duplicates(names):
            yield ("domains",), f"domain {name!r} is listed more than once"
        total = sum(d.weight for d in self.domains)
        if total != 100:
            yield ("domains",), f"domain weights add up to {total}; they must add up to 100"
        if self.trafficSplit:
            for ref in _duplicates(e.modelRef for e in self.trafficSplit):
                yield ("trafficSplit",), f"model {ref!r} is listed more than once"
            total = sum(e.weight for e in self.trafficSplit)
            if total != 100:
                yield ("trafficSplit",), f"weights add up to {total}; they must add up to 100"
        for i, pin in enumerate(self.pins):
            if pin.domain is not None and pin.domain not in names:
                yield (
                    ("pins", i, "domain"),
                    f"{pin.domain!r} is not one of the endpoint's domains ({', '.join(names)})",
                )
        for node in _duplicates(q.node for q in self.quarantinedNodes):
            yield ("quarantinedNodes",), f"node {node!r} is listed more than once"


class Endpoint(Resource):
    """Binds a model to domains with traffic weights, SLOs, a routing strategy and auth."""

    plural = "endpoints"
    aliases = ("ep",)
    kind: Literal["Endpoint"] = "Endpoint"
    spec: EndpointSpec


# Job ---------------------------------------------------------------------------------------


class Parallelism(StrictModel):
    dp: int = Field(1, ge=1)
    tp: int = Field(1, ge=1)
    pp: int = Field(1, ge=1)

    @property
    def gpus(self) -> int:
        return self.dp * self.tp * self.pp

    @property
    def replica_gpus(self) -> int:
        """GPUs of one data-parallel replica; elastic scaling adds or removes whole replicas."""
        return self.tp * self.pp


class Elastic(StrictModel):
    min_gpus: int = Field(ge=1)
    max_gpus: int = Field(ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> Elastic:
        if self.min_gpus > self.max_gpus:
            raise_problems(
                "Elastic",
                [
                    (
                        ("min_gpus",),
                        f"min_gpus {self.min_gpus} is more than max_gpus {self.max_gpus}",
                    )
                ],
            )
        return self


class Dataset(StrictModel):
    uri: str = Field(min_length=1)
    name: str | None = None


class Checkpoint(StrictModel):
    uri: str = Field(min_length=1)
    interval_steps: int | None = Field(None, ge=1)
    keepLast: int | None = Field(None, ge=1)


class JobConstraints(StrictModel):
    nodeClasses: list[Name] = Field(default_factory=list)
    domains: list[Name] = Field(default_factory=list)
    residency: str | None = None  # e.g. "US|EU"


class TrainingSlo(StrictModel):
    step_time_p95_ms: PositiveMs | None = None
    throughput_tps: Positive | None = None


class Workload(StrictModel):
    """What each rank runs. `synthetic` is the built-in numeric workload; otherwise
    `module:function` (called in the rank's process) or a command line (torchrun-style scripts
    read RANK, WORLD_SIZE, ... from the environment and run unchanged)."""

    entrypoint: str = Field("synthetic", min_length=1)
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    steps: int | None = Field(None, ge=1)  # total training steps; None: the workload decides
    stepTimeMs: PositiveMs | None = None  # synthetic only: compute time of one step


class JobSpec(StrictModel):
    type: Literal["pretraining", "finetuning", "lora", "eval"] | None = None
    parallelism: Parallelism = Field(default_factory=Parallelism)
    elastic: Elastic | None = None
    datasets: list[Dataset] = Field(default_factory=list)
    checkpoint: Checkpoint | None = None
    constraints: JobConstraints = Field(default_factory=JobConstraints)
    strategy: StrategyRef | None = None
    capacityPoolRef: Name | None = None
    slo: TrainingSlo | None = None
    priorityClass: Name | None = None
    priority: int = 0
    workload: Workload = Field(default_factory=Workload)
    restartBudget: int = Field(3, ge=0)  # failures of the job's own making before it is Failed
    placement: Literal["binpack", "spread"] = "binpack"
    # Desired state set by actions (`:pause`, `:resume`, `:scale`, `:checkpoint`).
    paused: bool = False
    targetGpus: int | None = Field(None, ge=1)
    checkpointRequests: int = Field(0, ge=0)  # bumped by :checkpoint; the scheduler acts on a rise

    @model_validator(mode="after")
    def _consistent(self) -> JobSpec:
        raise_problems("JobSpec", self._problems())
        return self

    def _problems(self) -> Iterator[tuple[Loc, str]]:
        par, el = self.parallelism, self.elastic
        replica = par.replica_gpus
        if el is None:
            if self.targetGpus is not None and self.targetGpus != par.gpus:
                yield (
                    ("targetGpus",),
                    (
                        f"the job is not elastic, so it always uses dp*tp*pp = {par.gpus} GPUs; "
                        "set spec.elastic to scale it"
                    ),
                )
            return
        for field in ("min_gpus", "max_gpus"):
            value = getattr(el, field)
            if value % replica:
                yield (
                    ("elastic", field),
                    (
                        f"{value} is not a multiple of tp*pp = {replica} (GPUs per data-parallel "
                        "replica)"
                    ),
                )
        if not el.min_gpus <= par.gpus <= el.max_gpus:
            yield (
                ("parallelism",),
                f"dp*tp*pp = {par.gpus} GPUs lies outside elastic {el.min_gpus}..{el.max_gpus}",
            )
        target = self.targetGpus
        if target is not None:
            if not el.min_gpus <= target <= el.max_gpus:
                yield (
                    ("targetGpus",),
                    f"{target} lies outside elastic {el.min_gpus}..{el.max_gpus}",
                )
            elif target % replica:
                yield ("targetGpus",), f"{target} is not a multiple of tp*pp = {replica}"


class JobStatus(Status):
    # Written by the scheduler (phase, attempt, step, checkpoints, GPU-hours, ...); kept whole so
    # that a Job read back from the API can be applied again.
    model_config = ConfigDict(extra="allow")


class Job(Resource):
    """A distributed training job: parallelism, elasticity, data, checkpoints, constraints."""

    plural = "jobs"
    aliases = ("job",)
    kind: Literal["Job"] = "Job"
    spec: JobSpec
    status: JobStatus = Field(default_factory=JobStatus)
