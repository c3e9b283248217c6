"""Events and audit records as the Events page shows them: newest first, who did what to which
object. Pure functions of what `GET /v1/events` and `GET /v1/audit` answer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

Obj = dict[str, Any]

EVENT_COLUMNS = ["Time", "Type", "Reason", "Kind", "Name", "Who", "Message", "Project"]
AUDIT_COLUMNS = ["Seq", "Time", "Who", "Action", "Kind", "Name", "Project", "Changed"]


@dataclass(frozen=True)
class EventFilter:
    """The server filters (`kind`, `name`, `type`, `since`, `limit`) and the ones applied
    here (`who`, `text` in the message)."""

    kind: str = ""
    name: str = ""
    type: str = ""
    who: str = ""
    text: str = ""

    def query(self) -> dict[str, str]:
        return {
            k: v for k, v in (("kind", self.kind), ("name", self.name), ("type", self.type)) if v
        }


def _time(values: pd.Series) -> pd.Series:
    return pd.to_datetime(values, utc=True, errors="coerce", format="ISO8601")


def events(items: list[Obj], f: EventFilter | None = None) -> pd.DataFrame:
    rows = [
        {
            "Time": e.get("time"),
            "Type": e.get("type") or "Normal",
            "Reason": e.get("reason") or "",
            "Kind": e.get("kind") or "",
            "Name": e.get("name") or "",
            "Who": e.get("actor") or "",
            "Message": e.get("message") or "",
            "Project": e.get("project") or "",
        }
        for e in items
    ]
    out = pd.DataFrame(rows, columns=EVENT_COLUMNS)
    out["Time"] = _time(out["Time"])
    if f is not None:
        if f.who.strip():
            out = out[out["Who"].str.contains(f.who.strip(), case=False, regex=False)]
        if f.text.strip():
            out = out[out["Message"].str.contains(f.text.strip(), case=False, regex=False)]
    return out.sort_values("Time", ascending=False, kind="stable").reset_index(drop=True)


def changed(diff: list[Obj] | None, limit: int = 4) -> str:
    """`spec.cordoned: False → True; ...`: the first few leaf changes of an audit record."""
    parts = []
    for d in (diff or [])[:limit]:
        parts.append(f"{d.get('path')}: {_short(d.get('before'))} → {_short(d.get('after'))}")
    more = len(diff or []) - limit
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def _short(value: Any, width: int = 40) -> str:
    text = "∅" if value is None else str(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def audit(items: list[Obj], who: str = "") -> pd.DataFrame:
    rows = [
        {
            "Seq": r.get("seq"),
            "Time": r.get("time"),
            "Who": r.get("actor") or "",
            "Action": r.get("action") or "",
            "Kind": r.get("kind") or "",
            "Name": r.get("name") or "",
            "Project": r.get("project") or "",
            "Changed": changed(r.get("diff")),
        }
        for r in items
    ]
    out = pd.DataFrame(rows, columns=AUDIT_COLUMNS)
    out["Time"] = _time(out["Time"])
    if who.strip():
        out = out[out["Who"].str.contains(who.strip(), case=False, regex=False)]
    return out.sort_values("Seq", ascending=False, kind="stable").reset_index(drop=True)


_BUCKETS = ((60, "10s"), (3600, "1min"), (6 * 3600, "5min"), (2 * 86400, "1h"))


def bucket_size(span_s: float) -> str:
    """A pandas frequency that cuts a span into a few dozen buckets at most."""
    for limit, freq in _BUCKETS:
        if span_s <= limit * 4:
            return freq
    return "1D"


def per_bucket(events: pd.DataFrame) -> pd.DataFrame:
    """Events counted per time bucket and type: Bucket, Type, Events."""
    times = events["Time"].dropna()
    if times.empty:
        return pd.DataFrame(columns=["Bucket", "Type", "Events"])
    freq = bucket_size((times.max() - times.min()).total_seconds())
    buckets = events.assign(Bucket=events["Time"].dt.floor(freq))
    return buckets.groupby(["Bucket", "Type"]).size().reset_index(name="Events")
