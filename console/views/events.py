"""Events: who did what to which object and why, newest first by their real time; followed
live from `/v1/events/stream`. The console's own failures (an action the API refused) are
listed with them, as events of actor `console`."""

from __future__ import annotations

from infermesh.console.views.base import (
    DIM,
    NONE,
    WARN,
    Cell,
    Column,
    Ctx,
    Obj,
    ViewSpec,
    age,
    parse_time,
    plain,
)


def _time(obj: Obj, ctx: Ctx) -> Cell:
    then = parse_time(obj.get("time"))
    if then is None:
        return Cell(NONE, DIM, 0.0)
    return Cell(then.strftime("%m-%d %H:%M:%S"), "", (then.timestamp(), str(obj.get("id", ""))))


def _type(obj: Obj, ctx: Ctx) -> Cell:
    kind = str(obj.get("type") or NONE)
    return Cell(kind, WARN if kind == "Warning" else "")


def _object(obj: Obj, ctx: Ctx) -> Cell:
    return Cell(f"{str(obj.get('kind', '')).lower()}/{obj.get('name', '')}")


def is_warning(obj: Obj) -> bool:
    return obj.get("type") == "Warning"


COLUMNS = (
    Column("time", "TIME", _time, "T"),
    Column("age", "AGE", lambda o, c: age(o.get("time"), c.now), clock=True),
    Column("type", "TYPE", _type, "Y"),
    Column("reason", "REASON", lambda o, c: plain(o.get("reason")), "E"),
    Column("object", "OBJECT", _object, "O"),
    Column("actor", "ACTOR", lambda o, c: plain(o.get("actor")), "C"),
    Column("message", "MESSAGE", lambda o, c: plain(o.get("message"))),
)

VIEW = ViewSpec(
    name="events",
    title="Events",
    kind="events",
    aliases=("ev", "event"),
    columns=COLUMNS,
    default_sort="time",
    default_reverse=True,
)
