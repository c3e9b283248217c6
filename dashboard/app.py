"""The dashboard's entry script, as `streamlit run` (through `infermesh dashboard`) runs it:
page setup, the connection check, the sidebar and the pages (views/*.py)."""

from __future__ import annotations

import streamlit as st

from infermesh.dashboard import confirm, session, widgets

st.set_page_config(page_title="InferMesh", page_icon=":material/hub:", layout="wide")

PAGES = {
    "Inference": [
        st.Page(
            "views/slos.py", title="SLOs", icon=":material/target:", url_path="slos", default=True
        ),
        st.Page(
            "views/slo_detail.py", title="SLO detail", icon=":material/monitoring:", url_path="slo"
        ),
        st.Page("views/canary.py", title="Canary", icon=":material/alt_route:", url_path="canary"),
    ],
    "Fleet and training": [
        st.Page("views/fleet.py", title="Fleet", icon=":material/dns:", url_path="fleet"),
        st.Page("views/jobs.py", title="Jobs", icon=":material/model_training:", url_path="jobs"),
    ],
    "Activity": [
        st.Page(
            "views/events.py", title="Events & audit", icon=":material/history:", url_path="events"
        ),
    ],
}
page = st.navigation(PAGES)


def sidebar() -> None:
    s = session.settings()
    st.markdown("**InferMesh** control plane")
    st.caption(f"API: `{s.api}`")
    st.text_input("Project", value=s.project, key=session.PROJECT)
    st.selectbox(
        "Auto-refresh",
        widgets.REFRESH_CHOICES,
        index=widgets.REFRESH_CHOICES.index(widgets.DEFAULT_REFRESH),
        format_func=lambda s: "off" if not s else f"every {s} s",
        key=widgets.REFRESH,
    )
    if st.button("Refresh now", key="dashboard.refresh_now"):
        st.rerun()


with st.sidebar:
    sidebar()
principal = session.connect()
if principal is None:
    st.button("Retry", key="dashboard.retry")
    st.stop()
st.sidebar.caption(f"Signed in as {principal.label}")
confirm.show_outcomes()
page.run()
confirm.pending_dialog()
