"""The dashboard's connection to the control plane, per browser session: where the API is and
which token to use (the context file, overridden by INFERMESH_* variables, which
`infermesh dashboard` sets), the SDK client, who we are, and API errors shown as messages
instead of tracebacks. The token never appears on a page or in a log."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import streamlit as st

from infermesh.client import MeshClient
from infermesh.context import load_context
from infermesh.dashboard.access import Principal
from infermesh.errors import MeshError, Unauthorized, Unavailable

T = TypeVar("T")

SETTINGS = "mesh.settings"  # tests (and embedders) may set {"api", "token", "project"} here
PROJECT = "mesh.project"  # the project picked in the sidebar
_CLIENT = "mesh.client"
_PRINCIPAL = "mesh.principal"


@dataclass(frozen=True)
class Settings:
    api: str
    token: str | None
    project: str

    def __repr__(self) -> str:  # never show the token
        return f"Settings(api={self.api!r}, project={self.project!r})"


def settings() -> Settings:
    given = st.session_state.get(SETTINGS)
    if given:
        base = Settings(
            str(given["api"]).rstrip("/"), given.get("token"), given.get("project") or "default"
        )
    else:
        ctx = load_context()
        base = Settings(ctx.api_url, ctx.token, ctx.project)
    project = st.session_state.get(PROJECT)
    return Settings(base.api, base.token, project) if project else base


def client() -> MeshClient:
    """The session's SDK client, made again when the settings change."""
    wanted = settings()
    held = st.session_state.get(_CLIENT)
    if held is not None and held[0] == wanted:
        return held[1]
    if held is not None:
        held[1].close()
    made = MeshClient(wanted.api, wanted.token, project=wanted.project, timeout=10.0)
    st.session_state[_CLIENT] = (wanted, made)
    return made


def project() -> str:
    return settings().project


def connect() -> Principal | None:
    """Who we are to the API (`whoami`); on failure a message saying what is wrong and how to
    fix it, and None."""
    s = settings()
    try:
        principal = Principal.from_whoami(client().whoami())
    except Unavailable as exc:
        st.error(f"**Cannot reach the InferMesh API.** {exc.message}", icon=":material/cloud_off:")
        return None
    except Unauthorized as exc:
        st.error(
            f"**The API at {s.api} refused our token.** {exc.message}. Pass `--token` to "
            "`infermesh dashboard` (or set INFERMESH_TOKEN); `mesh token create` mints one.",
            icon=":material/key_off:",
        )
        return None
    except MeshError as exc:
        st.error(
            f"**The API at {s.api} answered with an error.** {exc.message}", icon=":material/error:"
        )
        return None
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        st.error(_unexpected(s.api, exc), icon=":material/error:")
        return None
    st.session_state[_PRINCIPAL] = principal
    return principal


def principal() -> Principal:
    held = st.session_state.get(_PRINCIPAL)
    return held if held is not None else Principal("unknown", (), ())


def may_change(kind: str) -> bool:
    return principal().may_change(kind, project())


def _unexpected(api: str, exc: Exception) -> str:
    return (
        f"**The server at {api} did not answer like the InferMesh API** "
        f"({type(exc).__name__}: {exc}). Is `--api` the control-plane URL?"
    )


def fetch(what: str, call: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
    """`call(*args, **kwargs)`, or None after showing why it failed (the API's message)."""
    try:
        return call(*args, **kwargs)
    except MeshError as exc:
        st.error(f"Could not load {what}: {exc.message}", icon=":material/error:")
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        st.error(
            f"Could not load {what}. " + _unexpected(settings().api, exc), icon=":material/error:"
        )
    return None


@st.cache_data(ttl=60, show_spinner=False, max_entries=256)
def _slo_series(api: str, token: str | None, project: str, name: str, since: str, step: int) -> Any:
    with MeshClient(api, token, project=project, timeout=30.0) as c:
        return c.slo_series(name, since=since, step=step)


def cached_slo_series(name: str, since: str, step: int) -> dict[str, Any]:
    """An SLO's series (`client.slo_series`), cached for a minute per API, token and project:
    for long windows, which change slowly and are slow to read."""
    s = settings()
    return dict(_slo_series(s.api, s.token, s.project, name, since, step))


def items(what: str, plural: str, **kwargs: Any) -> list[dict[str, Any]] | None:
    """The objects of one kind in the session's project, or None (error shown)."""
    listed = fetch(what, client().list, plural, **kwargs)
    if listed is None:
        return None
    if listed.stale:
        st.warning(
            "etcd is unavailable: showing the API's last-known state (stale).",
            icon=":material/history_toggle_off:",
        )
    return listed.items
