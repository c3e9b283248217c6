"""Plotly charts on the dashboard's pages, drawn by our own Streamlit component (assets/plot.js)
with a plotly.js of the three trace types the charts use (assets/, served and loaded early by
page_head.py) instead of `st.plotly_chart`, which loads all of plotly.js: see page_head.py for
why."""

from __future__ import annotations

from pathlib import Path

import plotly.graph_objects as go
import plotly.io as pio
import streamlit as st

ASSETS = Path(__file__).resolve().parent / "assets"
# `make plotly-bundle` puts the one matching plotly.py there (tests/test_dashboard_data.py).
BUNDLE = next(ASSETS.glob("plotly-dashboard-*.min.js"))
PLOTLY_JS_VERSION = BUNDLE.name.removeprefix("plotly-dashboard-").removesuffix(".min.js")
BUNDLE_URL = f"_infermesh/{BUNDLE.name}"  # relative: resolves under any base URL path
COMPONENT = "infermesh_plot"
# The trace types the bundle draws (assets/build/entry.js); others would draw nothing.
TRACES = frozenset({"scatter", "bar", "heatmap"})
CONFIG = {"displaylogo": False, "modeBarButtonsToRemove": ["lasso2d", "select2d"]}

component = st.components.v2.component(
    COMPONENT, js=(ASSETS / "plot.js").read_text(), isolate_styles=False
)


def payload(fig: go.Figure, key: str) -> bytes:
    """The figure as plotly.js takes it, with the chart's config; `uirevision` keeps what the
    user zoomed or hid across live refreshes of the same chart."""
    drawn = {trace.type for trace in fig.data}
    if not drawn <= TRACES:
        raise ValueError(
            f"the dashboard's Plotly bundle cannot draw {sorted(drawn - TRACES)} traces; "
            f"it draws {', '.join(sorted(TRACES))}"
        )
    figure = fig.to_dict()
    figure["layout"].setdefault("uirevision", key)
    return pio.json.to_json_plotly({**figure, "config": CONFIG}).encode()
