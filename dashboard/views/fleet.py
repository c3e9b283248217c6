"""Fleet: nodes by domain and class as a heatmap of their GPUs' readings, their conditions, and
cordon, drain, quarantine and unquarantine for one or several nodes."""

from __future__ import annotations

import streamlit as st

from infermesh.dashboard import charts, confirm, fleet_data, session, widgets
from infermesh.dashboard.actions import ActionRequest
from infermesh.dashboard.fleet_data import Filters

st.title("Fleet")
st.caption(
    "Every node with its agent's latest report: GPU utilisation, VRAM and temperature by "
    "domain and node class, readiness and what operators did to it."
)


def render(filters: Filters, reading: str) -> None:
    nodes = session.items("nodes", "nodes")
    if nodes is None:
        return
    if not nodes:
        widgets.empty(
            f"No nodes in project {session.project()!r}.",
            "Nodes appear when their agents report (`infermesh up` starts a simulated fleet).",
        )
        return
    every = fleet_data.frame(nodes)
    shown = fleet_data.apply(every, filters)
    summary = fleet_data.summary(shown)
    for col, (label, value) in zip(st.columns(len(summary)), summary.items(), strict=True):
        col.metric(
            label, "–" if value is None else (f"{value}%" if label == "Mean util" else value)
        )
    if shown.empty:
        widgets.empty("No node matches the filters.")
        return
    _, unit, zmax = fleet_data.READINGS[reading]
    grid = fleet_data.grid(shown, reading)
    widgets.plot(
        charts.heatmap(
            grid.z,
            grid.text,
            grid.rows,
            f"{fleet_data.READING_TITLES[reading]} by domain · class",
            zmax=zmax,
            unit=unit,
        ),
        key="fleet.heatmap",
    )
    widgets.table(shown, key="fleet.nodes")
    names = set(shown["Node"])
    conds = fleet_data.conditions([n for n in nodes if n["metadata"]["name"] in names])
    st.markdown("#### Conditions needing attention")
    if conds.empty:
        st.caption("All shown nodes are Ready, schedulable and not quarantined.")
    else:
        widgets.table(conds, key="fleet.conditions")


def actions(names: list[str]) -> None:
    st.markdown("#### Actions")
    if not session.may_change("Node"):
        widgets.read_only("Node")
        return
    targets = st.multiselect("Nodes", names, key="fleet.targets")
    reason = st.text_input("Reason (for the audit log; required to quarantine)", key="fleet.reason")
    buttons = st.columns(5)
    verbs = [
        ("cordon", "Cordon", "take no new work"),
        ("uncordon", "Uncordon", "take work again"),
        ("drain", "Drain", "finish their work and take no more: their replicas stop serving"),
        ("quarantine", "Quarantine", "stop serving at once and stay out until unquarantined"),
        ("unquarantine", "Unquarantine", "serve again"),
    ]
    for col, (verb, label, effect) in zip(buttons, verbs, strict=True):
        if col.button(label, key=f"fleet.{verb}", disabled=not targets, width="stretch"):
            if verb == "quarantine" and not reason.strip():
                st.error(
                    "Quarantine needs a reason (it goes into the audit log); nothing was sent."
                )
                return
            which = ", ".join(targets)
            confirm.request(
                ActionRequest.of(
                    "nodes",
                    verb,
                    targets,
                    {"reason": reason.strip()} if reason.strip() else {},
                    detail=f"{label}: {which} will {effect}.",
                )
            )


listed = session.items("nodes", "nodes")
if listed is not None:
    frame = fleet_data.frame(listed)
    top = st.columns([2, 2, 2, 2, 3])
    domains = top[0].multiselect("Domain", sorted(set(frame["Domain"]) - {""}), key="fleet.domains")
    classes = top[1].multiselect("Class", sorted(set(frame["Class"]) - {""}), key="fleet.classes")
    states = top[2].multiselect("Status", fleet_data.STATES, key="fleet.states")
    text = top[3].text_input("Name contains", key="fleet.text")
    with top[4]:
        reading = (
            st.segmented_control(
                "Heatmap",
                list(fleet_data.READINGS),
                default="Util",
                key="fleet.reading",
                required=True,
            )
            or "Util"
        )
    filters = Filters(tuple(domains), tuple(classes), tuple(states), text)
    widgets.live(render, filters, reading)
    if listed:
        actions(fleet_data.apply(frame, filters)["Node"].tolist())
