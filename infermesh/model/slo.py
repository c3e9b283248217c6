"""SLO: a service-level objective over an Endpoint's (or a Job's) indicator, with its error budget.

`objective` is the percentage of good events the target promises over `window` (99.5 leaves an
error budget of 0.5 % of the window's events). What counts as good depends on `sli`
(docs/slo.md): availability (not 5xx or timed out; 429 only bad with `rateLimitedIsBad`), latency
and ttft (succeeded within `thresholdMs`), and for training jobs step_time and throughput (shown,
not evaluated yet). Endpoints' `spec.slo` blocks give implicit SLOs of the same shape
(`infermesh.store.slo.definitions`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, ClassVar, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from infermesh.model.meta import Loc, Name, Resource, Status, StrictModel, raise_problems

SliKind = Literal["availability", "latency", "ttft", "step_time", "throughput"]
SloWindow = Literal["28d", "30d"]

# Which SLIs measure which kind of target, and which threshold each needs.
ENDPOINT_SLIS: tuple[str, ...] = ("availability", "latency", "ttft")
JOB_SLIS: tuple[str, ...] = ("step_time", "throughput")
MS_THRESHOLD_SLIS: tuple[str, ...] = ("latency", "ttft", "step_time")
# Percent; a latency-like objective of 99 reads "99 % of requests within thresholdMs".
DEFAULT_OBJECTIVE: dict[str, float] = {
    "availability": 99.9,
    "latency": 99.0,
    "ttft": 99.0,
    "step_time": 99.0,
    "throughput": 99.0,
}


class SloTarget(StrictModel):
    kind: Literal["Endpoint", "Job"]
    name: Name


class SLOSpec(StrictModel):
    target: SloTarget
    sli: SliKind
    thresholdMs: Annotated[float, Field(gt=0)] | None = None
    thresholdTps: Annotated[float, Field(gt=0)] | None = None  # throughput: tokens/s floor
    objective: float | None = None  # percent; None: DEFAULT_OBJECTIVE[sli]
    window: SloWindow = "30d"
    domain: Name | None = None  # only this domain's traffic (Endpoint targets)
    rateLimitedIsBad: bool = False  # 429s spend the budget (else they are not counted)
    description: str = ""

    @field_validator("objective")
    @classmethod
    def _percent(cls, value: float | None) -> float | None:
        # Said here rather than with gt/lt: the message names the unit and gives an example.
        if value is not None and not 0 < value < 100:
            raise ValueError(
                f"objective is a percentage strictly between 0 and 100, such as 99.5 "
                f"(got {value:g})"
            )
        return value

    @model_validator(mode="after")
    def _consistent(self) -> SLOSpec:
        raise_problems("SLOSpec", self._problems())
        if self.objective is None:
            self.objective = DEFAULT_OBJECTIVE[self.sli]
        return self

    def _problems(self) -> Iterator[tuple[Loc, str]]:
        allowed = ENDPOINT_SLIS if self.target.kind == "Endpoint" else JOB_SLIS
        if self.sli not in allowed:
            yield (
                ("sli",),
                f"sli {self.sli!r} does not apply to {self.target.kind} targets; "
                f"use one of {', '.join(allowed)}",
            )
            return  # its thresholds would only repeat the mismatch
        if self.sli in MS_THRESHOLD_SLIS and self.thresholdMs is None:
            yield (
                ("thresholdMs",),
                f"sli {self.sli!r} needs thresholdMs: the time within which an event is good",
            )
        if self.sli not in MS_THRESHOLD_SLIS and self.thresholdMs is not None:
            yield ("thresholdMs",), f"sli {self.sli!r} takes no thresholdMs"
        if self.sli == "throughput" and self.thresholdTps is None:
            yield (
                ("thresholdTps",),
                "sli 'throughput' needs thresholdTps: the tokens/s below which it is bad",
            )
        if self.sli != "throughput" and self.thresholdTps is not None:
            yield ("thresholdTps",), f"sli {self.sli!r} takes no thresholdTps"
        if self.domain is not None and self.target.kind != "Endpoint":
            yield ("domain",), "domain applies to Endpoint targets only"


class SLOStatus(Status):
    # Written by the SLO evaluator (phase, burn table, budget, alerts, percentiles); kept whole
    # so that an SLO read back from the API can be applied again.
    model_config = ConfigDict(extra="allow")


class SLO(Resource):
    """A service-level objective: a target, an indicator, an objective and its window."""

    plural: ClassVar[str] = "slos"
    aliases: ClassVar[tuple[str, ...]] = ("slo",)
    kind: Literal["SLO"] = "SLO"
    spec: SLOSpec
    status: SLOStatus = Field(default_factory=SLOStatus)
