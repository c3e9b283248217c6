"""Jobs: training jobs with their state, GPUs, step time, throughput and checkpoints, GPU-hours
and cost per capacity pool against its quota and budget; pause, resume, scale, checkpoint."""

from __future__ import annotations

from typing import Any

import streamlit as st

from infermesh.dashboard import charts, confirm, jobs_data, session, widgets
from infermesh.dashboard.actions import ActionRequest

st.title("Jobs")
st.caption(
    "Training jobs as the scheduler reports them (the columns of `mesh get jobs -o wide`), and "
    "what they drew from their capacity pools."
)


def render() -> None:
    jobs = session.items("jobs", "jobs")
    pools = session.items("capacity pools", "capacitypools")
    if jobs is None:
        return
    if not jobs:
        widgets.empty(
            f"No training jobs in project {session.project()!r}.",
            "`mesh job submit -f examples/job.yaml` submits one.",
        )
    else:
        frame = jobs_data.frame(jobs)
        phases = frame["Phase"].value_counts()
        cols = st.columns(4)
        cols[0].metric("Jobs", len(frame))
        cols[1].metric("Running", int(phases.get("Running", 0)))
        cols[2].metric("Pending", int(phases.get("Pending", 0)))
        cols[3].metric("GPUs held", int(frame["GPUs"].str.partition("/")[0].astype(int).sum()))
        widgets.table(frame, key="jobs.table")
        widgets.plot(charts.job_progress_chart(frame), key="jobs.progress")
    st.markdown("#### Capacity pools")
    if not pools:
        widgets.empty("No capacity pools: jobs draw on no quota or budget.")
        return
    usage = jobs_data.pools(pools, jobs)
    widgets.plot(charts.pool_chart(usage), key="jobs.pools")
    widgets.table(usage, key="jobs.pool_table")


def actions(jobs: list[dict[str, Any]]) -> None:
    st.markdown("#### Actions")
    if not session.may_change("Job"):
        widgets.read_only("Job")
        return
    names = sorted(str(j["metadata"]["name"]) for j in jobs)
    cols = st.columns([3, 2, 2, 2, 2, 2])
    name = cols[0].selectbox("Job", names, key="jobs.target")
    job = next(j for j in jobs if j["metadata"]["name"] == name)
    for col, verb, label in (
        (cols[1], "pause", "Pause"),
        (cols[2], "resume", "Resume"),
        (cols[3], "checkpoint", "Checkpoint"),
    ):
        col.markdown("&nbsp;")
        if col.button(label, key=f"jobs.{verb}", width="stretch"):
            confirm.request(ActionRequest.of("jobs", verb, [name]))
    gpus = cols[4].number_input(
        "GPUs",
        min_value=1,
        value=max(1, jobs_data.wanted_gpus(job)),
        step=1,
        key=f"jobs.gpus.{name}",
    )
    cols[5].markdown("&nbsp;")
    if cols[5].button("Scale", key="jobs.scale", width="stretch"):
        confirm.request(ActionRequest.of("jobs", "scale", [name], {"gpus": int(gpus)}))


widgets.live(render)
listed = session.items("jobs", "jobs")
if listed:
    actions(listed)
