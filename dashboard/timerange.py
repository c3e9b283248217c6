"""Time ranges the charts offer, and the step that keeps each chart to a few hundred points."""

from __future__ import annotations

from dataclasses import dataclass

from infermesh.sli import parse_duration

MAX_POINTS = 360
# Steps a chart may use: multiples of the routers' 10 s buckets and of the rollup tiers.
_STEPS = (10, 30, 60, 300, 600, 1800, 3600, 7200, 14400, 86400)


@dataclass(frozen=True)
class TimeRange:
    label: str  # 15m, 1h, ... as the picker shows it
    seconds: int
    step: int  # seconds per chart point

    @property
    def since(self) -> str:
        """The `since` of a series query: a duration before now."""
        return f"-{self.seconds}s"

    @property
    def points(self) -> int:
        return self.seconds // self.step


def step_for(seconds: int, max_points: int = MAX_POINTS) -> int:
    """The smallest of the usual steps that covers `seconds` in at most `max_points`."""
    for step in _STEPS:
        if seconds / step <= max_points:
            return step
    return _STEPS[-1]


def time_range(label: str) -> TimeRange:
    """A range from its label (`15m`, `6h`, `7d`, `30d`); ValueError for anything else."""
    seconds = int(parse_duration(label))
    return TimeRange(label, seconds, step_for(seconds))


RANGES: tuple[TimeRange, ...] = tuple(time_range(x) for x in ("15m", "1h", "6h", "1d", "7d", "30d"))
DEFAULT_RANGE = "1h"
