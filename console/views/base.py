"""What a table view is made of: cells, columns, the view spec, and the colour thresholds.

A column is a pure function from an object (and a `Ctx`: the clock and the other objects it may
look up) to a `Cell`: the text shown, its style, and the value the column sorts by. Views are
plain data built from columns; nothing here touches a widget or the network.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from rich.console import RenderableType
from rich.text import Text

from infermesh.cli import printers

if TYPE_CHECKING:
    from infermesh.console.state import ConsoleState

Obj = dict[str, Any]
NONE = "-"

# Styles of the thresholds (names, so a theme can restyle them through Rich's styles).
OK, WARN, CRIT, DIM = "green", "yellow", "bold red", "dim"


class Cell(Text):
    """A table cell: its text and style, and the value its column sorts by (the text when
    there is no better one). Two cells are equal when they would look and sort the same."""

    def __init__(self, text: str = NONE, style: str = "", sort: Any = None) -> None:
        super().__init__(text, style=style, no_wrap=True, overflow="ellipsis")
        self.sort = sort_value(text if sort is None else sort)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Cell)
            and self.plain == other.plain
            and str(self.style) == str(other.style)
            and self.sort == other.sort
        )

    __hash__ = None  # type: ignore[assignment]


def sort_value(value: Any) -> tuple[int, Any]:
    """A key that sorts numbers as numbers and puts missing values last in ascending order."""
    if value is None or value == NONE:
        return (2, 0)
    if isinstance(value, bool):
        return (0, int(value))
    if isinstance(value, int | float):
        return (0, float(value))
    if isinstance(value, tuple):
        return (0, value)
    return (1, str(value).lower())


@dataclass(frozen=True)
class Ctx:
    """What a cell may depend on besides its object: the time, and the console's state."""

    now: datetime
    state: ConsoleState | None = None


Render = Callable[[Obj, Ctx], Cell]


@dataclass(frozen=True)
class Column:
    id: str
    header: str
    cell: Render
    sort_key: str | None = None  # the (shift-)letter that sorts by this column
    clock: bool = False  # the cell depends on the time (an age): redrawn as time passes


@dataclass(frozen=True)
class ViewSpec:
    """One table view: which objects it shows (`kind`, `select`), its columns, how it sorts
    by default, where enter leads, and what its detail pane shows."""

    name: str
    title: str
    kind: str  # the collection in ConsoleState.objects it reads ("nodes", "events", ...)
    columns: tuple[Column, ...]
    aliases: tuple[str, ...] = ()
    default_sort: str = "name"
    default_reverse: bool = False
    drill: str | None = None  # the view `enter` opens, with the row's key as its parameter
    describe: Callable[[Obj, Ctx], RenderableType] | None = None
    select: Callable[[ConsoleState, str | None], Mapping[str, Obj]] | None = None
    depends: tuple[str, ...] = ()  # other collections whose changes redraw every row
    routable: bool = True  # reachable with `:name` (drill-only views are not)
    event_kind: str | None = None  # the kind its objects' events name ("Node")
    extra: dict[str, Any] = field(default_factory=dict)

    def column(self, column_id: str) -> Column | None:
        return next((c for c in self.columns if c.id == column_id), None)

    def rows(self, state: ConsoleState, param: str | None) -> Mapping[str, Obj]:
        if self.select is not None:
            return self.select(state, param)
        return state.objects.get(self.kind, {})


def row(spec: ViewSpec, obj: Obj, ctx: Ctx) -> tuple[Cell, ...]:
    """The cells of one object in a view, in column order."""
    return tuple(c.cell(obj, ctx) for c in spec.columns)


# --- cell helpers ------------------------------------------------------------------------------


dig = printers.dig


def plain(value: Any, sort: Any = None, style: str = "") -> Cell:
    """A value as the CLI prints it (`<none>` shown as `-`)."""
    shown = printers.text(value)
    return Cell(NONE if shown == printers.NONE else shown, style, value if sort is None else sort)


def level(value: float | None, warn: float, crit: float) -> str:
    """The threshold style of a value where higher is worse."""
    if value is None:
        return DIM
    if value >= crit:
        return CRIT
    if value >= warn:
        return WARN
    return OK


def number(value: float | None, fmt: str, warn: float, crit: float) -> Cell:
    """A number with its unit (`fmt`, e.g. "{:.0f}%") coloured by its thresholds."""
    if value is None:
        return Cell(NONE, DIM)
    return Cell(fmt.format(value), level(value, warn, crit), value)


def parse_time(stamp: Any) -> datetime | None:
    return printers.parse_time(stamp) if isinstance(stamp, str) else None


def age(stamp: Any, now: datetime) -> Cell:
    """kubectl's age (42s, 5m, 3h, 2d) against the console's clock; sorts oldest last."""
    then = parse_time(stamp)
    if then is None:
        return Cell(NONE, DIM)
    return Cell(printers.age(stamp, now), "", (now - then).total_seconds())


def name_cell(obj: Obj, ctx: Ctx) -> Cell:
    return Cell(str(dig(obj, "metadata.name") or NONE), "bold")


def age_cell(obj: Obj, ctx: Ctx) -> Cell:
    return age(dig(obj, "metadata.creationTimestamp"), ctx.now)


NAME = Column("name", "NAME", name_cell, "N")
AGE = Column("age", "AGE", age_cell, "A", clock=True)


def from_printer(column: printers.Column, sort_key: str | None = None) -> Column:
    """A column of `mesh get` (infermesh/cli/printers.py) as a console column."""
    ident = column.header.lower()
    return Column(ident, column.header, lambda o, _ctx: plain(column.value(o)), sort_key)


def printer_columns(kind: str, keys: Mapping[str, str] | None = None) -> tuple[Column, ...]:
    """Every non-wide column `mesh get` shows for `kind`, with sort letters from `keys`."""
    keys = keys or {}
    return tuple(
        from_printer(c, keys.get(c.header)) for c in printers.COLUMNS.get(kind, []) if not c.wide
    )


def utc_now() -> datetime:
    return datetime.now(UTC)


def key_of(obj: Obj) -> str:
    """The row key of an object: `project/name`."""
    meta = obj.get("metadata") or {}
    return f"{meta.get('project') or 'default'}/{meta.get('name')}"
