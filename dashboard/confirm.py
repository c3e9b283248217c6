"""Running actions from a page: destructive ones wait in session state and open a dialog that
asks for the target's name; the others go at once. Every outcome is shown (the API's message
on failure) and kept for the session's log on the Events page."""

from __future__ import annotations

import streamlit as st

from infermesh.dashboard import session
from infermesh.dashboard.actions import ActionRequest, Outcome, confirmed, execute

PENDING = "dashboard.pending"  # the ActionRequest waiting for its confirmation
FLASH = "dashboard.flash"  # outcomes to show once, at the top of the next run
LOG = "dashboard.log"  # every outcome of this session, newest last
TYPED = "dashboard.confirm_typed"


def request(action: ActionRequest) -> None:
    """Ask for an action: a destructive one opens the confirmation dialog, another runs now.
    Reruns the app either way, so every part of the page shows the result."""
    if action.destructive:
        st.session_state[PENDING] = action
        st.session_state.pop(TYPED, None)
    else:
        _record(execute(session.client(), action))
    st.rerun()


def _record(outcomes: list[Outcome]) -> None:
    st.session_state.setdefault(LOG, []).extend(outcomes)
    st.session_state[FLASH] = list(outcomes)


def _cancel() -> None:
    st.session_state.pop(PENDING, None)


@st.dialog("Confirm", on_dismiss=_cancel)
def _dialog() -> None:
    action: ActionRequest = st.session_state[PENDING]
    st.markdown(f"**{action.title}**")
    if action.detail:
        st.warning(action.detail, icon=":material/warning:")
    typed = st.text_input(f"Type **{action.confirm_word}** to confirm", key=TYPED)
    go, cancel = st.columns(2)
    if cancel.button("Cancel", key="dashboard.confirm_cancel", width="stretch"):
        _cancel()
        st.rerun()
    if go.button("Confirm", key="dashboard.confirm_go", type="primary", width="stretch"):
        if not confirmed(action, typed):
            st.error(f"Type {action.confirm_word!r} exactly to confirm; nothing was changed.")
            return
        _cancel()
        _record(execute(session.client(), action))
        st.rerun()


def pending_dialog() -> None:
    """Open the dialog of the action waiting for confirmation, if any (call once per run)."""
    if isinstance(st.session_state.get(PENDING), ActionRequest):
        _dialog()


def show_outcomes() -> None:
    """The outcomes of the last action, once."""
    for outcome in st.session_state.pop(FLASH, []):
        if outcome.ok:
            st.success(outcome.message, icon=":material/check_circle:")
        else:
            st.error(outcome.message, icon=":material/cancel:")


def session_log() -> list[Outcome]:
    return list(st.session_state.get(LOG, []))
