"""Topology hints for a gang's collectives, and the `TrainingStrategy` interface that gives them.

A strategy reads where a gang was placed and returns a `TopologyHint` (all-reduce algorithm,
gradient compression, fusion window, fan-out between islands) that the executor puts in every
rank's environment. While the job runs, the service feeds the ranks' step reports to `adjust`,
which may return a `TopologyAdjust` when communication degrades (seed 000: "switch topology hints
(ring -> tree -> hierarchical), enable compression on slow paths, extend fusion window").

Built-ins: `ring`, `tree` and `hierarchical` always hint what they are named; `net_aware_hier`
picks by the placement's span and escalates when communication's share of step time rises.
Everything here is pure: no clock, no I/O, no state between calls.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Literal, Protocol

from infermesh.model import builtin_named
from infermesh.scheduler.snapshot import Placement, Snapshot

Algorithm = Literal["ring", "tree", "hierarchical"]
ALGORITHMS: tuple[Algorithm, ...] = ("ring", "tree", "hierarchical")

DEFAULT_FUSION_MS = 5  # gradient-bucket fusion window inside a zone
WAN_FUSION_MS = 20  # across regions: fewer, larger messages amortise the round trips
MAX_FUSION_MS = 80  # escalation stops here; longer windows only delay the step
DEFAULT_INTER_FANOUT = 4  # hierarchical: how many islands one inter-island reduction joins
TREE_MIN_NODES = 4  # net_aware_hier: from this many nodes in one zone, tree beats ring on latency

# net_aware_hier.adjust: a step's comm share is the median over its ranks of comm_ms / step_time_ms.
BASELINE_STEPS = 5  # the first steps under a hint set its baseline share
RECENT_STEPS = 5  # the last steps are compared with it (needs BASELINE + RECENT distinct steps)
DEGRADE_RATIO = 1.5  # escalate when the recent share exceeds the baseline by this factor ...
MIN_COMM_SHARE = 0.30  # ... and communication takes at least this share of a step


@dataclass(frozen=True, slots=True)
class TopologyHint:
    """How a gang's ranks should reduce; it holds from step `since_step` on."""

    algorithm: Algorithm
    compression: bool = False
    fusion_window_ms: int = DEFAULT_FUSION_MS
    inter_fanout: int | None = None  # hierarchical only
    since_step: int = 0  # reports of earlier steps ran under another hint

    def as_dict(self) -> dict[str, Any]:
        """JSON for the rank environment (INFERMESH_TOPOLOGY) and the Job's status."""
        return {
            "algorithm": self.algorithm,
            "compression": self.compression,
            "fusionWindowMs": self.fusion_window_ms,
            "interFanout": self.inter_fanout,
            "sinceStep": self.since_step,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TopologyHint:
        """The hint `as_dict` wrote (a new leader reads it back from the Job's status)."""
        algorithm = data.get("algorithm")
        if algorithm not in ALGORITHMS:
            raise ValueError(f"topology algorithm {algorithm!r} is not one of {ALGORITHMS}")
        fanout = data.get("interFanout")
        return cls(
            algorithm=algorithm,
            compression=bool(data.get("compression", False)),
            fusion_window_ms=int(data.get("fusionWindowMs", DEFAULT_FUSION_MS)),
            inter_fanout=None if fanout is None else int(fanout),
            since_step=int(data.get("sinceStep", 0)),
        )


@dataclass(frozen=True, slots=True)
class RankReport:
    """What one rank reports about one step."""

    rank: int
    step: int
    step_time_ms: float
    comm_ms: float  # time spent in collectives during the step


@dataclass(frozen=True, slots=True)
class TopologyAdjust:
    """A change of hint while the job runs, and why."""

    old: TopologyHint
    new: TopologyHint
    reason: str


class TrainingStrategy(Protocol):
    """Built-ins and plugins alike. `params` are the Job's `strategy.params` (over the Strategy
    object's); a bad param raises ValueError naming it."""

    name: str

    def hint(
        self, placement: Placement, snapshot: Snapshot, params: Mapping[str, Any]
    ) -> TopologyHint: ...

    def adjust(
        self, current: TopologyHint, reports: Sequence[RankReport], params: Mapping[str, Any]
    ) -> TopologyAdjust | None: ...


@dataclass(frozen=True, slots=True)
class Span:
    """How far a placement reaches: distinct nodes, NVLink islands, zones and regions."""

    nodes: int
    islands: int
    zones: int
    regions: int

    @classmethod
    def of(cls, placement: Placement, snapshot: Snapshot) -> Span:
        nodes = [snapshot.nodes[key] for key in placement.nodes() if key in snapshot.nodes]
        return cls(
            nodes=len(nodes),
            islands=len({n.nvlink_island for n in nodes}),
            zones=len({n.zone for n in nodes}),
            regions=len({n.region for n in nodes}),
        )


def _int_param(params: Mapping[str, Any], name: str, default: int, minimum: int) -> int:
    value = params.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"strategy param {name} must be an integer >= {minimum}, not {value!r}")
    return value


def _bool_param(params: Mapping[str, Any], name: str) -> bool:
    value = params.get(name, False)
    if not isinstance(value, bool):
        raise ValueError(f"strategy param {name} must be true or false, not {value!r}")
    return value


class _Fixed:
    """A built-in that always hints its own algorithm and never adjusts."""

    name: ClassVar[str]
    algorithm: ClassVar[Algorithm]

    def hint(
        self, placement: Placement, snapshot: Snapshot, params: Mapping[str, Any]
    ) -> TopologyHint:
        hierarchical = self.algorithm == "hierarchical"
        return TopologyHint(
            algorithm=self.algorithm,
            compression=_bool_param(params, "compression"),
            fusion_window_ms=_int_param(params, "fusion_window_ms", DEFAULT_FUSION_MS, 0),
            inter_fanout=(
                _int_param(params, "inter_fanout", DEFAULT_INTER_FANOUT, 2)
                if hierarchical
                else None
            ),
        )

    def adjust(
        self, current: TopologyHint, reports: Sequence[RankReport], params: Mapping[str, Any]
    ) -> TopologyAdjust | None:
        return None


class Ring(_Fixed):
    name = "ring"
    algorithm = "ring"


class Tree(_Fixed):
    name = "tree"
    algorithm = "tree"


class Hierarchical(_Fixed):
    name = "hierarchical"
    algorithm = "hierarchical"


class NetAwareHier:
    """Hierarchical across zones or regions, ring inside a node or island, tree for many nodes
    in one zone; compression on when the gang crosses regions (or params say so). `adjust`
    escalates one step (to hierarchical with compression, then longer fusion windows) when the
    comm share of recent steps rises well above its baseline under the current hint. Reports
    from before `current.since_step` are ignored, so an escalation is judged only on steps run
    under the new hint: it cannot fire twice on the same evidence, and it never steps back."""

    name = "net_aware_hier"

    def hint(
        self, placement: Placement, snapshot: Snapshot, params: Mapping[str, Any]
    ) -> TopologyHint:
        fanout = _int_param(params, "inter_fanout", DEFAULT_INTER_FANOUT, 2)
        forced = _bool_param(params, "compression")
        span = Span.of(placement, snapshot)
        if span.zones > 1 or span.regions > 1:
            wan = span.regions > 1
            return TopologyHint(
                algorithm="hierarchical",
                compression=wan or forced,
                fusion_window_ms=WAN_FUSION_MS if wan else DEFAULT_FUSION_MS,
                inter_fanout=fanout,
            )
        algorithm: Algorithm = "tree" if span.nodes >= TREE_MIN_NODES else "ring"
        return TopologyHint(algorithm=algorithm, compression=forced)

    def adjust(
        self, current: TopologyHint, reports: Sequence[RankReport], params: Mapping[str, Any]
    ) -> TopologyAdjust | None:
        shares = _step_shares(reports, current.since_step)
        if len(shares) < BASELINE_STEPS + RECENT_STEPS:
            return None
        baseline = statistics.median(share for _, share in shares[:BASELINE_STEPS])
        recent = statistics.median(share for _, share in shares[-RECENT_STEPS:])
        if recent <= MIN_COMM_SHARE or recent <= DEGRADE_RATIO * baseline:
            return None
        new = _escalate(current, _int_param(params, "inter_fanout", DEFAULT_INTER_FANOUT, 2))
        if new is None:
            return None
        new = replace(new, since_step=shares[-1][0] + 1)
        return TopologyAdjust(
            old=current,
            new=new,
            reason=(
                f"communication took {recent:.0%} of step time over the last {RECENT_STEPS} "
                f"steps, up from {baseline:.0%}"
            ),
        )


def _step_shares(reports: Sequence[RankReport], since_step: int) -> list[tuple[int, float]]:
    """(step, median comm share over its ranks) for each step from `since_step`, in order."""
    by_step: dict[int, list[float]] = {}
    for r in reports:
        if r.step >= since_step and r.step_time_ms > 0:
            by_step.setdefault(r.step, []).append(min(1.0, max(0.0, r.comm_ms / r.step_time_ms)))
    return [(step, statistics.median(by_step[step])) for step in sorted(by_step)]


def _escalate(current: TopologyHint, fanout: int) -> TopologyHint | None:
    """The next, more WAN-tolerant hint; None when there is none left."""
    longer = min(MAX_FUSION_MS, max(2 * current.fusion_window_ms, WAN_FUSION_MS))
    if current.algorithm != "hierarchical" or not current.compression:
        return TopologyHint(
            algorithm="hierarchical",
            compression=True,
            fusion_window_ms=longer,
            inter_fanout=current.inter_fanout or fanout,
        )
    if current.fusion_window_ms < MAX_FUSION_MS:
        return replace(current, fusion_window_ms=longer)
    return None


BUILTINS: dict[str, TrainingStrategy] = {
    "ring@1.0": Ring(),
    "tree@1.0": Tree(),
    "hierarchical@1.0": Hierarchical(),
    "net_aware_hier@1.0": NetAwareHier(),
}


def strategy_named(ref: str) -> TrainingStrategy:
    """The built-in training strategy `ref` names: `net_aware_hier@1.0`, or bare `ring`."""
    name = builtin_named(ref)
    if name is not None and name in BUILTINS:
        return BUILTINS[name]
    what = "an inference strategy" if name is not None else "not a known training strategy"
    raise ValueError(f"strategy {ref!r} is {what}; training built-ins: {', '.join(BUILTINS)}")
