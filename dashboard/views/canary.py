"""Canary: each endpoint's revisions and weights, canary against baseline on every SLI, the
rollout plan and where it stands; set the split, promote, roll back."""

from __future__ import annotations

from typing import Any

import streamlit as st

from infermesh.dashboard import canary_data, charts, confirm, series_data, session, widgets
from infermesh.dashboard.actions import ActionRequest
from infermesh.dashboard.timerange import TimeRange

st.title("Canary")
st.caption(
    "Revisions and weights of each endpoint (`spec.modelRef` and `spec.trafficSplit`), each "
    "revision's SLIs side by side, and the rollout plan with its position."
)
PHASE_COLOURS = {
    "Progressing": "blue",
    "Holding": "orange",
    "Failed": "red",
    "RolledBack": "red",
    "Promoted": "green",
}
COMPARED = (
    ("rps", "Request rate", "req/s", False),
    ("error_rate", "Error ratio", "", True),
    ("latency_p95_ms", "Latency p95", "ms", False),
    ("ttft_p95_ms", "TTFT p95", "ms", False),
)


def render(name: str, policies: list[dict[str, Any]], rng: TimeRange) -> None:
    client = session.client()
    ep = session.fetch(f"endpoint {name!r}", client.get, "endpoints", name)
    if ep is None:
        return
    revs = canary_data.revisions(ep)
    degraded = canary_data.degrade_text(ep)
    if degraded:
        st.warning(degraded, icon=":material/speed:")
    left, right = st.columns([3, 2])
    with left:
        widgets.plot(charts.split_chart(revs), key="canary.split")
    with right:
        plan = canary_data.rollout(ep, policies)
        _rollout(plan)
        comparison = st.empty()  # filled after the charts: they draw before a table's code loads
    _revision_charts(name, revs, rng)
    if plan is not None and plan.comparison:
        with comparison.container():
            widgets.table(canary_data.comparison_frame(plan.comparison), key="canary.compare")


def _revision_charts(name: str, revs: list[tuple[str, int, str]], rng: TimeRange) -> None:
    """Each revision's SLIs side by side, and their totals."""
    client = session.client()
    answer = session.fetch(
        "the per-revision series",
        client.series,
        endpoint=name,
        since=rng.since,
        step=rng.step,
        by="revision",
    )
    if answer is None:
        return
    frame = series_data.frame(answer, by="revision")
    if frame.empty:
        widgets.empty(
            f"No traffic for endpoint {name!r} in the last {rng.label}.",
            "Routers post per-revision SLI series as they serve requests.",
        )
        return
    order = [r for r, _, _ in revs]
    order += sorted(set(frame["revision"]) - set(order))  # revisions that served, split or not
    colours = charts.colours(order)
    st.markdown(f"#### Canary against baseline, last {rng.label}")
    widgets.table(series_data.totals(answer, "revision", order), key="canary.totals")
    for row in (COMPARED[:2], COMPARED[2:]):
        for col, (metric, title, unit, percent) in zip(st.columns(2), row, strict=True):
            with col:
                widgets.plot(
                    charts.time_chart(
                        frame,
                        [(metric, title)],
                        title,
                        y_title=unit,
                        split_by="revision",
                        colours=colours,
                        percent=percent,
                    ),
                    key=f"canary.{metric}",
                )


def _rollout(plan: canary_data.Rollout | None) -> None:
    if plan is None:
        widgets.empty(
            "No rollout: no Policy with a `rollout` plan applies to this endpoint.",
            "Splits set here or with `mesh endpoint traffic-split` hold until changed.",
        )
        return
    if plan.source == "status":
        colour = PHASE_COLOURS.get(str(plan.phase), "gray")
        line = (
            f"**Rollout :{colour}[{plan.phase}]** · canary {plan.canary} at {plan.weight}% "
            f"(baseline {plan.baseline})"
        )
        position = plan.step if plan.step is not None and plan.step >= 0 else None
        if plan.steps:
            where = f"step {position + 1} of {len(plan.steps)}" if position is not None else None
            line += f" · {where or 'below the first step'}"
        st.markdown(line)
        if plan.next_step_at:
            st.caption(f"next step at {plan.next_step_at}; this one since {plan.step_started_at}")
        if plan.steps:
            widgets.plot(charts.rollout_chart(plan.steps, position, plan.weight), key="canary.plan")
        if plan.verdict or plan.reason:
            st.info(f"Verdict: **{plan.verdict or '–'}**. {plan.reason or ''}")
    else:
        st.markdown(
            f"**Rollout plan** of Policy `{plan.policy}`; no rollout controller reports one"
        )
        if plan.weight:
            where = (
                f"step {plan.step + 1} of {len(plan.steps)} reached"
                if plan.step is not None
                else "below the first step"
            )
            st.caption(f"The split gives the canaries {plan.weight}% now: {where}.")
        widgets.plot(charts.rollout_chart(plan.steps, plan.step, plan.weight), key="canary.plan")
    details = []
    if plan.interval_s is not None:
        details.append(f"{plan.interval_s}s per step")
    if plan.gates:
        details.append("rolls back when " + ", ".join(plan.gates))
    if details:
        st.caption("; ".join(details))


def actions(ep: dict[str, Any]) -> None:
    name = canary_data.name_of(ep)
    model = canary_data.baseline(ep)
    st.markdown("#### Actions")
    if not session.may_change("Endpoint"):
        widgets.read_only("Endpoint")
        return
    split_col, promote_col, rollback_col = st.columns([3, 2, 2])
    with split_col:
        st.markdown("**Set traffic split** (weights add up to 100)")
        current = {r: w for r, w, _ in canary_data.revisions(ep)}
        version = (ep.get("metadata") or {}).get("resourceVersion", "")  # fresh inputs per change
        weights: dict[str, int] = {}
        for ref, weight in current.items():
            weights[ref] = int(
                st.number_input(ref, 0, 100, weight, step=5, key=f"canary.w.{name}.{version}.{ref}")
            )
        extra = st.text_input(
            "Add a revision (fp8 or model@rev)", key=f"canary.new.{name}", placeholder="fp8"
        )
        if extra.strip():
            ref = canary_data.reference(extra, ep)
            weights[ref] = int(
                st.number_input(ref, 0, 100, 0, step=5, key=f"canary.w.{name}.{version}.new.{ref}")
            )
        if st.button("Set split", key="canary.set_split"):
            split, problem = canary_data.build_split(weights, ep)
            if problem:
                st.error(f"Split not sent: {problem}.")
            else:
                zero = canary_data.zeroes(split)
                text = ", ".join(f"{s['modelRef']}={s['weight']}%" for s in split)
                confirm.request(
                    ActionRequest.of(
                        "endpoints",
                        "trafficSplit",
                        [name],
                        {"split": split},
                        detail=f"Traffic split of {name} becomes {text}"
                        + (f"; {', '.join(zero)} will get no traffic." if zero else "."),
                        destructive=bool(zero),
                    )
                )
    canaries = canary_data.canaries(ep)
    with promote_col:
        st.markdown("**Promote**")
        revision = st.selectbox(
            "Canary", canaries or ["(none)"], key=f"canary.promote.{name}", disabled=not canaries
        )
        if st.button("Promote", key="canary.promote", disabled=not canaries):
            confirm.request(
                ActionRequest.of(
                    "endpoints",
                    "promote",
                    [name],
                    {"revision": revision, "reason": "promoted from the dashboard"},
                    detail=f"{revision} becomes the model of {name} and takes all its traffic "
                    f"(from {model}).",
                )
            )
    with rollback_col:
        st.markdown("**Roll back**")
        st.caption(f"All traffic back to {model}.")
        has_split = bool((ep.get("spec") or {}).get("trafficSplit"))
        if st.button("Roll back", key="canary.rollback", disabled=not has_split):
            confirm.request(
                ActionRequest.of(
                    "endpoints",
                    "rollback",
                    [name],
                    {"reason": "rolled back from the dashboard"},
                    detail=f"Drops the split of {name} ({canary_data.split_text(ep)}): all "
                    f"traffic goes back to {model}.",
                )
            )


endpoints = session.items("endpoints", "endpoints")
policies = session.items("policies", "policies") or []
if endpoints is not None and not endpoints:
    widgets.empty(
        f"No endpoints in project {session.project()!r}.",
        "`mesh apply -f examples/seed-endpoint.yaml` deploys one; then "
        "`mesh endpoint traffic-split NAME REV=WEIGHT...` starts a canary.",
    )
elif endpoints:
    names = [canary_data.name_of(e) for e in sorted(endpoints, key=canary_data.name_of)]
    with_canary = [canary_data.name_of(e) for e in endpoints if canary_data.canaries(e)]
    top = st.columns([2, 3])
    chosen = top[0].selectbox(
        "Endpoint",
        names,
        index=names.index(sorted(with_canary)[0]) if with_canary else 0,
        key="canary.endpoint",
    )
    with top[1]:
        picked = widgets.pick_range("canary.range")
    widgets.live(render, chosen, policies, picked)
    endpoint = next(e for e in endpoints if canary_data.name_of(e) == chosen)
    actions(endpoint)
    # Last: the page's charts draw before the table widget's code loads (docs/dashboard.md).
    st.markdown("#### All endpoints")
    widgets.table(canary_data.endpoints_frame(endpoints), key="canary.endpoints")
