"""Events & audit: every change, newest first, with who did it; the audit log (org admins);
and what this dashboard session did."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from infermesh.dashboard import charts, confirm, events_data, session, widgets
from infermesh.dashboard.events_data import EventFilter

st.title("Events & audit")
st.caption("What happened to which object and who did it, newest first.")
KINDS = ["", "Node", "Endpoint", "Job", "SLO", "Model", "Policy", "CapacityPool", "Domain"]
LIMITS = (100, 500, 2000)
COLUMNS = {
    "Time": st.column_config.DatetimeColumn("Time", format="YYYY-MM-DD HH:mm:ss"),
    "Message": st.column_config.TextColumn("Message", width="large"),
    "Changed": st.column_config.TextColumn("Changed", width="large"),
}


def render_events(f: EventFilter, limit: int) -> None:
    items = session.fetch("events", session.client().events, **f.query(), limit=limit)
    if items is None:
        return
    frame = events_data.events(items, f)
    if frame.empty:
        widgets.empty("No events match." if items else "No events in this project yet.")
        return
    widgets.plot(charts.events_chart(events_data.per_bucket(frame)), key="events.chart")
    widgets.table(frame, key="events.table", column_config=COLUMNS)


def render_audit(who: str, limit: int) -> None:
    items = session.fetch("the audit log", session.client().audit, limit=limit)
    if items is None:
        return
    frame = events_data.audit(items, who)
    if frame.empty:
        widgets.empty("No audit records match.")
        return
    widgets.table(frame, key="audit.table", column_config=COLUMNS)


events_tab, audit_tab, mine_tab = st.tabs(["Events", "Audit log", "This session"])
with events_tab:
    cols = st.columns([2, 2, 2, 2, 3, 2])
    kind = cols[0].selectbox("Kind", KINDS, format_func=lambda k: k or "any", key="events.kind")
    etype = cols[1].selectbox(
        "Type", ["", "Normal", "Warning"], format_func=lambda t: t or "any", key="events.type"
    )
    name = cols[2].text_input("Object name", key="events.name")
    who = cols[3].text_input("Who", key="events.who")
    text = cols[4].text_input("Message contains", key="events.text")
    limit = cols[5].selectbox("Last", LIMITS, key="events.limit")
    widgets.live(render_events, EventFilter(kind, name.strip(), etype, who, text), limit)
with audit_tab:
    if not session.principal().reads_audit:
        widgets.empty(
            "The audit log is an org admin's to read (role orgAdmin); events above show who "
            "did what."
        )
    else:
        cols = st.columns([3, 1])
        audit_who = cols[0].text_input("Who", key="audit.who")
        audit_limit = cols[1].selectbox("Last", LIMITS, key="audit.limit")
        widgets.live(render_audit, audit_who, audit_limit)
with mine_tab:
    log = confirm.session_log()
    if not log:
        widgets.empty("No actions from this dashboard session yet.")
    else:
        widgets.table(
            pd.DataFrame(
                [
                    {
                        "Time": o.time,
                        "Action": o.verb,
                        "Target": o.target,
                        "OK": o.ok,
                        "Result": o.message,
                    }
                    for o in reversed(log)
                ]
            ),
            key="events.mine",
        )
