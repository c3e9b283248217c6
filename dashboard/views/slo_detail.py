"""One SLO in the manner of Pyrra and Grafana SLO: tiles, error-budget burndown, the SLIs over
time with the SLO's threshold and its breaches shaded, and the multi-window burn-rate table."""

from __future__ import annotations

import time
from typing import Any

import pandas as pd
import streamlit as st

from infermesh.cli import slo_format
from infermesh.cli.printers import dig
from infermesh.dashboard import charts, series_data, session, slo_data, widgets
from infermesh.dashboard.timerange import TimeRange, step_for
from infermesh.sli import parse_duration

st.title("SLO detail")
MIN_BURNDOWN_POINTS = 24  # fewer: the window is read again in finer steps


def render(name: str, rng: TimeRange) -> None:
    client = session.client()
    slo = session.fetch(f"SLO {name!r}", client.get, "slos", name)
    if slo is None:
        return
    status = slo.get("status") or {}
    target = slo_format.target(slo)
    st.subheader(f"{name} · {target} · {slo_format.sli(slo)}")
    if dig(slo, "spec.description"):
        st.caption(str(dig(slo, "spec.description")))
    if status.get("message"):
        phase = status.get("phase")
        show = (
            st.error if phase == "Breaching" else st.warning if phase == "Warning" else st.caption
        )
        show(f"**{phase}** ({status.get('reason')}): {status['message']}")
    filters = slo_data.series_filters(slo)
    tiles = slo_data.tiles(slo) if filters is not None else slo_data.training_tiles(slo)
    for col, tile in zip(st.columns(len(tiles)), tiles, strict=True):
        col.metric(tile.label, tile.value, help=tile.help or None)
    if filters is None:
        widgets.empty(
            "A training SLO judges the job's latest step time or throughput against its "
            "threshold: it has no error budget, burn rate or series (docs/slo.md)."
        )
        return
    points = slo_data.points_frame(
        session.fetch("the SLO's series", client.slo_series, name, since=rng.since, step=rng.step)
    )
    metrics = series_data.frame(
        session.fetch(
            "the endpoint's series",
            client.series,
            **filters,
            since=rng.since,
            step=rng.step,
            by="endpoint",
        )
    )
    left, right = st.columns(2)
    burndown = left.empty()  # filled after the charts beside and below: its read is the slowest
    if points.empty and metrics.empty:
        with right:
            widgets.empty(
                f"No traffic for {target} in the last {rng.label}.",
                "Routers post SLI series as they serve requests; try a longer time range.",
            )
    else:
        spans, lines = slo_data.breaches(points, rng.step), slo_data.thresholds(slo)
        with right:
            _sli_chart(rng, points, spans, lines)
        _charts(metrics, spans, lines)
    with burndown.container():
        _burndown(slo, name)

    st.markdown("#### Multi-window burn-rate alerts")
    rules = slo_data.burn_rules(slo)
    if rules.empty:
        widgets.empty("Not evaluated yet: the SLO evaluator runs every 10 seconds.")
    else:
        widgets.table(rules, key="slo.rules")
    with st.expander("Burn rate per window and latency percentiles"):
        left, right = st.columns(2)
        left.dataframe(slo_data.rows_frame(slo_format.burn_rows(slo)), hide_index=True)
        right.dataframe(slo_data.rows_frame(slo_format.percentile_rows(slo)), hide_index=True)
    events = session.fetch("events", client.events, kind="SLO", name=name, limit=20)
    if events:
        with st.expander(f"Recent events ({len(events)})"):
            for e in events:
                st.markdown(f"`{e.get('time')}` **{e.get('reason')}** {e.get('message')}")


def _burndown(slo: dict[str, Any], name: str) -> None:
    window = str(dig(slo, "spec.window") or "30d")
    budget = dig(slo, "status.errorBudget")
    if budget is None and dig(slo, "spec.objective") is not None:
        budget = 1 - float(dig(slo, "spec.objective")) / 100
    points = _window_points(name, int(parse_duration(window)))
    burn = slo_data.burndown(points, budget)
    if burn.empty:
        widgets.empty(f"No valid events in the {window} window yet: the budget is untouched.")
    else:
        widgets.plot(
            charts.burndown_chart(burn, f"Error budget burndown ({window} window)"),
            key="slo.burndown",
        )


def _window_points(name: str, window_s: int) -> pd.DataFrame:
    """The SLO window's points for the burndown, in the window's step (2 h for 30 days); when
    the store holds only a little of the window (a new SLO, a new mesh: few points), read again
    from the first point in finer steps. Cached for a minute: a window's burndown moves slowly,
    and its read is the page's slowest."""
    points = slo_data.points_frame(
        session.fetch(
            "the SLO's window", session.cached_slo_series, name, f"-{window_s}s", step_for(window_s)
        )
    )
    if points.empty or len(points) >= MIN_BURNDOWN_POINTS:
        return points
    first = int(points["t"].min())
    span = max(int(time.time()) - first, 60)
    finer = session.fetch(
        "the SLO's window", session.cached_slo_series, name, str(first), step_for(span)
    )
    return slo_data.points_frame(finer) if finer else points


def _sli_chart(
    rng: TimeRange,
    points: pd.DataFrame,
    spans: list[tuple[pd.Timestamp, pd.Timestamp]],
    lines: dict[str, float],
) -> None:
    widgets.plot(
        charts.time_chart(
            points,
            [("ratio", "good / valid")],
            f"SLI per {rng.step}s step",
            threshold=lines.get("ratio"),
            threshold_label="objective",
            breaches=spans,
            percent=True,
        ),
        key="slo.ratio",
    )


def _charts(
    metrics: pd.DataFrame,
    spans: list[tuple[pd.Timestamp, pd.Timestamp]],
    lines: dict[str, float],
) -> None:
    """Request rate, error ratio, latency and TTFT, the SLO's threshold and breaches drawn."""
    left, right = st.columns(2)
    with left:
        widgets.plot(
            charts.time_chart(
                metrics, [("rps", "requests/s")], "Request rate", y_title="req/s", breaches=spans
            ),
            key="slo.rps",
        )
    with right:
        widgets.plot(
            charts.time_chart(
                metrics,
                [("error_rate", "5xx ratio")],
                "Error ratio",
                threshold=lines.get("error_rate"),
                threshold_label="error budget",
                breaches=spans,
                percent=True,
            ),
            key="slo.errors",
        )
    left, right = st.columns(2)
    with left:
        widgets.plot(
            charts.time_chart(
                metrics,
                [
                    ("latency_p50_ms", "p50"),
                    ("latency_p95_ms", "p95"),
                    ("latency_p99_ms", "p99"),
                ],
                "Latency",
                y_title="ms",
                threshold=lines.get("latency"),
                breaches=spans,
            ),
            key="slo.latency",
        )
    with right:
        widgets.plot(
            charts.time_chart(
                metrics,
                [("ttft_p95_ms", "TTFT p95")],
                "Time to first token",
                y_title="ms",
                threshold=lines.get("ttft"),
                breaches=spans,
            ),
            key="slo.ttft",
        )
    if spans:
        st.caption(f"Shaded: steps burning the budget faster than 1x ({len(spans)} spans).")


slos = session.items("SLOs", "slos")
if slos is not None and not slos:
    widgets.empty(
        f"No SLOs in project {session.project()!r} yet.",
        "An Endpoint's `spec.slo` implies SLOs; see the SLOs page.",
    )
elif slos:
    names = sorted(slo_data.name_of(s) for s in slos)
    wanted = st.query_params.get("slo")
    if wanted in names and wanted != st.session_state.get("slo.opened"):
        st.session_state["slo.name"] = wanted  # opened from a link or the SLOs page
    if st.session_state.get("slo.name") not in names:
        st.session_state["slo.name"] = names[0]
    top = st.columns([2, 3])
    chosen = top[0].selectbox("SLO", names, key="slo.name")
    st.session_state["slo.opened"] = chosen
    if chosen != wanted:
        st.query_params["slo"] = chosen
    with top[1]:
        picked = widgets.pick_range("slo.range")
    widgets.live(render, chosen, picked)
