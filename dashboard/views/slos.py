"""SLOs: every SLO of the project with its objective, current SLI, budget left and alerts."""

from __future__ import annotations

import streamlit as st

from infermesh.dashboard import charts, session, slo_data, widgets
from infermesh.dashboard.slo_data import BUCKETS, NO_DATA, PHASE_COLOURS

st.title("SLOs")
st.caption(
    "Every SLO of the project, standalone and implied by endpoints' `spec.slo`, as the API's "
    "SLO evaluator last judged it. Open one for its burn-down, SLIs and burn-rate alerts."
)
COLOURS = {label: colour for _, label, colour in BUCKETS} | {NO_DATA[0]: NO_DATA[1]}


def _budget_style(value: object) -> str:
    colour = COLOURS.get(str(value))
    return f"background-color: {colour}; color: white" if colour else ""


def _phase_style(value: object) -> str:
    colour = PHASE_COLOURS.get(str(value))
    return f"color: {colour}; font-weight: 600" if colour else ""


def render() -> None:
    slos = session.items("SLOs", "slos")
    if slos is None:
        return
    if not slos:
        widgets.empty(
            f"No SLOs in project {session.project()!r} yet.",
            "An Endpoint's `spec.slo` (p95_ms, ttft_ms, availability) implies SLOs; "
            "`mesh apply -f` an SLO object for more (docs/slo.md).",
        )
        return
    counts = slo_data.phase_counts(slos)
    cols = st.columns(4)
    cols[0].metric("SLOs", len(slos))
    cols[1].metric("Breaching", counts.get("Breaching", 0))
    cols[2].metric("Warning", counts.get("Warning", 0))
    cols[3].metric("OK", counts.get("OK", 0))
    frame = slo_data.overview(slos)
    styled = (
        frame.style.map(_budget_style, subset=["Budget"]).map(_phase_style, subset=["Phase"])
    ).format(
        {
            "Objective %": "{:g}",
            "Current %": "{:.3f}",
            "Budget left %": "{:.1f}",
            "Burn 1h": "{:.2f}x",
        },
        na_rep="–",
    )
    picked = widgets.table(
        styled,
        key="slos.table",
        on_select="rerun",
        selection_mode="single-row",
    )
    rows = getattr(getattr(picked, "selection", None), "rows", None) or []
    if rows:
        st.switch_page("views/slo_detail.py", query_params={"slo": frame.iloc[rows[0]]["SLO"]})
    left, right = st.columns([3, 1])
    with right:
        name = st.selectbox("SLO", frame["SLO"].tolist(), key="slos.open_name")
        if st.button("Open SLO", key="slos.open", type="primary"):
            st.switch_page("views/slo_detail.py", query_params={"slo": name})
        st.caption(
            "Budget buckets: "
            + ", ".join(f"{label} ≥ {lower:.0%}" for lower, label, _ in BUCKETS[:2])
            + ", low above 0, exhausted at or below 0."
        )
    with left:
        widgets.plot(charts.budget_bars(frame), key="slos.budget")


widgets.live(render)
