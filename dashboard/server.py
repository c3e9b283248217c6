"""The dashboard as `streamlit run` serves it (through `infermesh dashboard`): Streamlit's own
server running app.py, with the charts' plotly.js bundle on a route of its own and a head added
to every page that has the browser fetch it while Streamlit starts (page_head.py)."""

from __future__ import annotations

import streamlit as st
from starlette.middleware import Middleware
from starlette.routing import Route

from infermesh.dashboard import APP, page_head

app = st.App(
    APP,
    routes=[Route(page_head.BUNDLE_ROUTE_PATH, page_head.plotly_bundle)],
    middleware=[Middleware(page_head.PageHead)],
)
