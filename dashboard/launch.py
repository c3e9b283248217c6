"""How `infermesh dashboard` starts Streamlit: the command line (headless, telemetry off, bound to
127.0.0.1 unless told otherwise) and the environment that carries the API URL and token to the
app. The token travels only in the environment, never on the command line (`ps` shows that) and
never in a log."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

from infermesh.context import Context
from infermesh.dashboard import SERVER

DEFAULT_PORT = 8501
HEALTH_PATH = "/_stcore/health"  # Streamlit's readiness probe


def streamlit_argv(address: str = "127.0.0.1", port: int = DEFAULT_PORT) -> list[str]:
    return [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(SERVER),
        "--server.address",
        address,
        "--server.port",
        str(port),
        "--server.headless",
        "true",
        "--server.fileWatcherType",
        "none",
        "--server.runOnSave",
        "false",
        "--browser.gatherUsageStats",
        "false",
        "--client.toolbarMode",
        "minimal",
        "--theme.base",
        "light",
        # Streamlit runs a full gc.collect(2) after every script and fragment run: ~0.1 s of CPU
        # a page load with pandas and Plotly in the heap, competing with the browser drawing
        # it. Python's own generational collection still runs.
        "--runner.postScriptGC",
        "false",
    ]


def streamlit_env(ctx: Context, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The app's environment: ours, with the context's API, project and token as the
    INFERMESH_* overrides every client reads (infermesh/context.py)."""
    env = dict(os.environ if base is None else base)
    env["INFERMESH_API"] = ctx.api_url
    env["INFERMESH_PROJECT"] = ctx.project
    if ctx.token:
        env["INFERMESH_TOKEN"] = ctx.token
    else:
        env.pop("INFERMESH_TOKEN", None)
    env["STREAMLIT_BROWSER_GATHER_USAGE_STATS"] = "false"
    return env


def url(address: str, port: int) -> str:
    host = "127.0.0.1" if address in ("0.0.0.0", "") else address
    return f"http://{host}:{port}"
