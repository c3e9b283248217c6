"""Streamlit pieces every page uses: live refresh, the time-range picker, charts, tables and
empty states."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from infermesh.dashboard import plot as charts_plot
from infermesh.dashboard.timerange import DEFAULT_RANGE, RANGES, TimeRange

REFRESH = "dashboard.refresh_s"  # seconds between live refreshes; 0: off
REFRESH_CHOICES = (0, 5, 10, 30, 60)
DEFAULT_REFRESH = 10


def refresh_seconds() -> int:
    return int(st.session_state.get(REFRESH, DEFAULT_REFRESH))


def live(render: Callable[..., None], *args: Any) -> None:
    """Run `render(*args)` as a fragment that reruns on its own every refresh interval (the
    rest of the page stays put, so filters and dialogs are not disturbed)."""
    every = refresh_seconds() or None
    st.fragment(render, run_every=every)(*args)


def pick_range(key: str, default: str = DEFAULT_RANGE) -> TimeRange:
    labels = [r.label for r in RANGES]
    chosen = st.segmented_control("Time range", labels, default=default, key=key, required=True)
    return next((r for r in RANGES if r.label == chosen), RANGES[labels.index(default)])


def plot(fig: go.Figure, key: str) -> None:
    """A Plotly chart, drawn by the dashboard's own component (plot.py)."""
    charts_plot.component(key=key, data=charts_plot.payload(fig, key))


def table(frame: pd.DataFrame, key: str | None = None, **kwargs: Any) -> Any:
    return st.dataframe(frame, hide_index=True, width="stretch", key=key, **kwargs)


def empty(message: str, hint: str = "") -> None:
    st.info(message + (f"\n\n{hint}" if hint else ""), icon=":material/info:")


def read_only(kind: str) -> None:
    st.caption(
        f":material/lock: Read-only: your role may not change {kind} objects in this project."
    )
