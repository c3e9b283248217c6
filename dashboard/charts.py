"""Plotly figures of the dashboard: pure functions from frames to figures, no Streamlit."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio

from infermesh.dashboard.slo_data import BUCKETS, NO_DATA

Span = tuple[pd.Timestamp, pd.Timestamp]

BREACH_FILL = "rgba(214, 39, 40, 0.12)"
THRESHOLD_COLOUR = "#d62728"
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf")
_GRID, _MUTED = "#e6eaf1", "#808495"
_AXIS = {
    "gridcolor": _GRID,
    "linecolor": _GRID,
    "zerolinecolor": _GRID,
    "tickfont": {"color": _MUTED},
}
# Plotly's white template in Streamlit's font and colours, on the page's own background.
TEMPLATE = go.layout.Template(layout=pio.templates["plotly_white"].layout).update(
    layout={
        "font": {"family": '"Source Sans", sans-serif', "color": "#31333f"},
        "title": {"font": {"weight": 600}},
        "paper_bgcolor": "rgba(0,0,0,0)",
        "plot_bgcolor": "rgba(0,0,0,0)",
        "colorway": PALETTE,
        "xaxis": _AXIS,
        "yaxis": _AXIS,
    }
)


def colours(keys: Sequence[str]) -> dict[str, str]:
    """A colour per key, in order: the same revision has the same colour on every chart."""
    return {k: PALETTE[i % len(PALETTE)] for i, k in enumerate(keys)}


def _layout(fig: go.Figure, title: str, height: int = 300, y_title: str = "") -> go.Figure:
    fig.update_layout(
        template=TEMPLATE,
        title={"text": title, "x": 0, "font": {"size": 15}},
        height=height,
        margin={"l": 10, "r": 10, "t": 40, "b": 10},
        legend={"orientation": "h", "y": -0.15, "x": 0},
        hovermode="x unified",
        yaxis_title=y_title,
    )
    return fig


def _breaches(fig: go.Figure, spans: Sequence[Span]) -> None:
    """Shaded spans behind the lines, set in one go (`add_vrect` per span re-validates every
    shape so far: 9 spans took 40 ms)."""
    shaded = [
        {
            "type": "rect",
            "xref": "x",
            "yref": "paper",
            "x0": start,
            "x1": end,
            "y0": 0,
            "y1": 1,
            "fillcolor": BREACH_FILL,
            "line": {"width": 0},
            "layer": "below",
        }
        for start, end in spans
    ]
    if shaded:
        fig.update_layout(shapes=[*fig.layout.shapes, *shaded])


def time_chart(
    frame: pd.DataFrame,
    columns: Sequence[tuple[str, str]],
    title: str,
    *,
    y_title: str = "",
    threshold: float | None = None,
    threshold_label: str = "SLO threshold",
    breaches: Sequence[Span] = (),
    split_by: str | None = None,
    colours: dict[str, str] | None = None,
    percent: bool = False,
) -> go.Figure:
    """Lines over time: one per column, or with `split_by` one per value of that column (then
    `columns` holds one metric). The SLO threshold is a dashed line, breaches shaded spans."""
    fig = go.Figure()
    if split_by:
        col, _ = columns[0]
        groups = dict(list(frame.groupby(split_by, sort=False)))
        keyed = colours or {}
        keys = [k for k in keyed if k in groups] + sorted(k for k in groups if k not in keyed)
        for i, key in enumerate(keys):
            part = groups[key]
            fig.add_trace(
                go.Scatter(
                    x=part["time"],
                    y=part[col] * (100 if percent else 1),
                    name=str(key),
                    mode="lines+markers" if len(part) < 3 else "lines",
                    line={"color": keyed.get(key, PALETTE[i % len(PALETTE)])},
                )
            )
    else:
        for i, (col, label) in enumerate(columns):
            if col not in frame:
                continue
            fig.add_trace(
                go.Scatter(
                    x=frame["time"],
                    y=frame[col] * (100 if percent else 1),
                    name=label,
                    mode="lines+markers" if len(frame) < 3 else "lines",
                    line={"color": PALETTE[i % len(PALETTE)]},
                )
            )
    if threshold is not None:
        fig.add_hline(
            y=threshold * (100 if percent else 1),
            line={"color": THRESHOLD_COLOUR, "dash": "dash", "width": 1.5},
            annotation_text=threshold_label,
            annotation_position="top left",
            annotation_font_color=THRESHOLD_COLOUR,
        )
    _breaches(fig, breaches)
    if percent:
        fig.update_yaxes(ticksuffix="%")
    return _layout(fig, title, y_title=y_title)


def burndown_chart(frame: pd.DataFrame, title: str = "Error budget burndown") -> go.Figure:
    """Budget left over the window, as a share: falls with every bad event; below 0 is
    overspent."""
    fig = go.Figure(
        go.Scatter(
            x=frame["time"],
            y=frame["remaining"] * 100,
            name="budget left",
            fill="tozeroy",
            line={"color": "#2e9e5b"},
        )
    )
    fig.add_hline(y=0, line={"color": THRESHOLD_COLOUR, "width": 1})
    fig.update_yaxes(ticksuffix="%")
    return _layout(fig, title)


def budget_bars(overview: pd.DataFrame, clip: float = -100.0) -> go.Figure:
    """Budget left per SLO, coloured by bucket; overspent budgets are drawn to `clip` %
    (the hover tells the real figure)."""
    colours = {label: colour for _, label, colour in BUCKETS} | {NO_DATA[0]: NO_DATA[1]}
    frame = overview.iloc[::-1]  # the most urgent on top
    left = pd.to_numeric(frame["Budget left %"], errors="coerce")
    fig = go.Figure(
        go.Bar(
            x=left.fillna(0).clip(lower=clip),
            y=frame["SLO"],
            orientation="h",
            marker={"color": [colours.get(b, NO_DATA[1]) for b in frame["Budget"]]},
            customdata=list(zip(left.fillna(float("nan")), frame["Budget"], strict=True)),
            hovertemplate="%{y}: %{customdata[0]:.1f}% left (%{customdata[1]})<extra></extra>",
        )
    )
    fig.update_xaxes(ticksuffix="%", range=[max(clip, min(0.0, left.min() or 0.0)) - 5, 105])
    height = max(160, 26 * len(frame) + 60)
    return _layout(fig, "Error budget left", height=height)


def split_chart(weights: Sequence[tuple[str, int, str]]) -> go.Figure:
    """The traffic split as one stacked bar: (revision, weight %, role) per segment."""
    fig = go.Figure()
    for i, (revision, weight, role) in enumerate(weights):
        fig.add_trace(
            go.Bar(
                x=[weight],
                y=["traffic"],
                orientation="h",
                name=f"{revision} ({role})",
                text=f"{revision}: {weight}%",
                textposition="inside",
                marker={"color": PALETTE[i % len(PALETTE)]},
            )
        )
    fig.update_layout(barmode="stack", showlegend=True, hovermode="closest")
    fig.update_xaxes(range=[0, 100], ticksuffix="%")
    fig.update_yaxes(showticklabels=False)
    return _layout(fig, "Traffic split", height=170)


def rollout_chart(steps: Sequence[int], step: int | None, weight: int | None) -> go.Figure:
    """The rollout plan's steps as bars (canary weight per step), the current one
    highlighted."""
    labels = [f"step {i + 1}" for i in range(len(steps))]
    colours = [
        "#2e9e5b" if step is not None and i < step else "#1f77b4" if i == step else "#c7c7c7"
        for i in range(len(steps))
    ]
    fig = go.Figure(
        go.Bar(x=labels, y=list(steps), marker={"color": colours}, text=[f"{s}%" for s in steps])
    )
    if weight is not None:
        fig.add_hline(y=weight, line={"dash": "dot", "color": "#1f77b4"})
    fig.update_yaxes(range=[0, 105], ticksuffix="%")
    return _layout(fig, "Canary weight per step", height=240)


def heatmap(
    z: list[list[float | None]],
    text: list[list[str]],
    rows: list[str],
    title: str,
    *,
    zmax: float | None = None,
    unit: str = "",
) -> go.Figure:
    """Nodes as cells: one row per (domain, class), one cell per node, coloured by a reading."""
    width = max((len(r) for r in z), default=0)
    labelled = width <= 10  # names in the cells while they fit
    fig = go.Figure(
        go.Heatmap(
            z=z,
            y=rows,
            text=text,
            texttemplate="%{text}" if labelled else None,
            hovertemplate="%{text}<br>%{z:.0f}" + unit + "<extra></extra>",
            colorscale="RdYlGn_r",
            zmin=0,
            zmax=zmax,
            xgap=2,
            ygap=2,
            colorbar={"ticksuffix": unit},
        )
    )
    fig.update_xaxes(showticklabels=False, showgrid=False)
    fig.update_yaxes(autorange="reversed", showgrid=False)
    fig.update_layout(hovermode="closest")
    return _layout(fig, title, height=max(220, 44 * len(rows) + 80))


def pool_chart(pools: pd.DataFrame) -> go.Figure:
    """GPU-hours used against quota and USD spent against budget, per capacity pool (as a share
    of the limit, so both fit one axis; the hover tells the figures)."""
    fig = go.Figure()
    for col, limit, label, colour in (
        ("GPU-hours", "Quota GPU-h", "GPU-hours of quota", "#1f77b4"),
        ("Cost USD", "Budget USD", "USD of budget", "#ff7f0e"),
    ):
        share = pools[col] / pools[limit].where(pools[limit] > 0) * 100
        fig.add_trace(
            go.Bar(
                x=pools["Pool"],
                y=share.fillna(0),
                name=label,
                marker={"color": colour},
                customdata=list(zip(pools[col], pools[limit].fillna(0), strict=True)),
                hovertemplate="%{x}: %{customdata[0]:.2f} of %{customdata[1]:.0f} "
                f"({label})<extra></extra>",
            )
        )
    fig.add_hline(y=100, line={"color": THRESHOLD_COLOUR, "dash": "dash"})
    fig.update_layout(barmode="group", hovermode="closest")
    fig.update_yaxes(ticksuffix="%")
    return _layout(fig, "Pools: used against quota and budget", height=280)


def job_progress_chart(jobs: pd.DataFrame) -> go.Figure:
    """Each job's progress (step / total steps) as a bar, coloured by phase."""
    colours = {"Running": "#1f77b4", "Succeeded": "#2e9e5b", "Failed": "#d62728"}
    fig = go.Figure(
        go.Bar(
            x=jobs["Progress %"].fillna(0),
            y=jobs["Job"],
            orientation="h",
            marker={"color": [colours.get(p, "#9e9e9e") for p in jobs["Phase"]]},
            text=jobs["Phase"],
        )
    )
    fig.update_xaxes(range=[0, 100], ticksuffix="%")
    fig.update_layout(hovermode="closest")
    return _layout(fig, "Progress", height=max(160, 28 * len(jobs) + 60))


def events_chart(counts: pd.DataFrame) -> go.Figure:
    """Events per time bucket, stacked by type (Normal, Warning); `counts` as
    events_data.per_bucket makes it."""
    fig = go.Figure()
    for etype, colour in (("Normal", "#1f77b4"), ("Warning", "#d62728")):
        part = counts[counts["Type"] == etype]
        if part.empty:
            continue
        fig.add_trace(
            go.Bar(x=part["Bucket"], y=part["Events"], name=etype, marker={"color": colour})
        )
    fig.update_layout(barmode="stack", hovermode="closest")
    return _layout(fig, "Events over time", height=220)
