"""The windows an SLO is looked at over: the alerting windows and the SLO's own window.

A window of `w` seconds ending at `now` holds the buckets that started less than `w` seconds ago
(`now - w < start <= now`), the bucket still open included: `w / width` buckets of the routers'
10-second series, so a 5m window is 30 of them.
"""

from __future__ import annotations

# The Google SRE workbook's multi-window, multi-burn-rate alerts read these (alerts.py), and
# consoles chart them; ordered shortest first.
ALERT_WINDOWS: dict[str, int] = {
    "5m": 300,
    "30m": 1800,
    "1h": 3600,
    "2h": 7200,
    "6h": 6 * 3600,
    "1d": 86400,
    "3d": 3 * 86400,
}
SLO_WINDOWS: dict[str, int] = {"28d": 28 * 86400, "30d": 30 * 86400}
BURN_WINDOW = "1h"  # the burn rate time-to-exhaustion projects forward

Windows = tuple[tuple[str, int], ...]


def table_windows(slo_window: str) -> Windows:
    """The rows of an SLO's burn table: every alerting window, then the SLO window."""
    return (*ALERT_WINDOWS.items(), (slo_window, SLO_WINDOWS[slo_window]))


def all_windows(slo_windows: set[str]) -> Windows:
    """The windows one read must cover for SLOs with these SLO windows, shortest first."""
    extra = {w: SLO_WINDOWS[w] for w in slo_windows}
    return tuple(sorted({**ALERT_WINDOWS, **extra}.items(), key=lambda item: item[1]))


def seconds(window: str) -> int:
    return ALERT_WINDOWS.get(window) or SLO_WINDOWS[window]
