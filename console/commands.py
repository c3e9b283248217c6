"""The command registry: every key of the console, once. The browser screen's bindings, the `?`
help and the `ctrl+p` palette are all read from here, so they cannot disagree.

A `Command` is a key, the Textual action it runs, the view it belongs to (None: every view) and
whether it changes the mesh (`mutating`: left out entirely under `--readonly`). Views are
switched by name (`:nodes`, `:no`), so they are palette commands without a key.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from textual.binding import Binding

from infermesh.console.actions import ACTIONS
from infermesh.console.views import VIEWS

Group = str  # "Navigation", "Table", "Sort", "Actions"


@dataclass(frozen=True)
class Command:
    key: str | None  # Textual key name; None: palette only
    action: str  # Textual action string, run on the browser screen
    description: str
    group: Group
    view: str | None = None  # None: every view
    mutating: bool = False
    show: bool = False  # shown in the footer
    display: str | None = None  # how the key reads ("?" for question_mark)
    help: str = ""  # a longer line for the palette
    priority: bool = False  # taken before the focused widget sees the key

    @property
    def key_text(self) -> str:
        return self.display or (self.key or "")


GLOBAL: tuple[Command, ...] = (
    Command(
        "colon",
        "prompt('command')",
        "Go to view",
        "Navigation",
        show=True,
        display=":",
        priority=True,
        help="type a view name or alias: nodes no, endpoints ep, jobs, slo, events ev, ...",
    ),
    Command(
        "slash",
        "prompt('filter')",
        "Filter",
        "Table",
        show=True,
        display="/",
        priority=True,
        help="regex on the rows; /!re inverts; /key=value on labels or columns",
    ),
    Command("question_mark", "help", "Help", "Navigation", show=True, display="?"),
    Command("minus", "last_view", "Last view", "Navigation", display="-"),
    Command("left_square_bracket", "history_back", "Back in history", "Navigation", display="["),
    Command(
        "right_square_bracket", "history_forward", "Forward in history", "Navigation", display="]"
    ),
    Command("escape", "escape", "Clear filter / close pane / back", "Navigation", display="esc"),
    Command("d", "describe", "Describe", "Table", show=True),
    Command("space", "mark", "Mark row", "Table", display="space"),
    Command("ctrl+u", "clear_marks", "Clear marks", "Table"),
    Command("ctrl+s", "save_csv", "Save CSV", "Table", show=True),
    Command("w", "toggle_warnings", "Warnings only", "Table", view="events", show=True),
)


def view_commands() -> list[Command]:
    return [
        Command(
            None,
            f"goto('{v.name}')",
            f"View {v.title}",
            "Navigation",
            help=f":{v.name}" + "".join(f" :{a}" for a in v.aliases),
        )
        for v in VIEWS.values()
        if v.routable
    ]


def sort_commands() -> list[Command]:
    out = []
    for view in VIEWS.values():
        for column in view.columns:
            if column.sort_key:
                out.append(
                    Command(
                        column.sort_key,
                        f"sort('{view.name}', '{column.id}')",
                        f"Sort by {column.header}",
                        "Sort",
                        view=view.name,
                        display=f"shift+{column.sort_key.lower()}",
                    )
                )
    return out


def action_commands() -> list[Command]:
    out = []
    for spec in ACTIONS:
        display = {"percent_sign": "%"}.get(spec.key, spec.key)
        label = spec.label + ("..." if spec.typed or spec.dialog != "confirm" else "")
        for view in spec.views:
            out.append(
                Command(
                    spec.key,
                    f"act('{spec.id}')",
                    label,
                    "Actions",
                    view=view,
                    mutating=True,
                    show=True,
                    display=display,
                    help=spec.what,
                )
            )
    return out


REGISTRY: tuple[Command, ...] = (*GLOBAL, *view_commands(), *sort_commands(), *action_commands())
BY_ACTION: dict[str, Command] = {}
for _command in REGISTRY:
    BY_ACTION.setdefault(_command.action, _command)


def commands(readonly: bool) -> list[Command]:
    """Every command the console offers; none that changes the mesh when read-only."""
    return [c for c in REGISTRY if not (readonly and c.mutating)]


def bindings(readonly: bool) -> list[Binding]:
    """The browser screen's key bindings (view-specific ones are switched on and off by its
    `check_action`)."""
    return [
        Binding(
            c.key,
            c.action,
            c.description,
            show=c.show,
            key_display=c.display,
            priority=c.priority,
        )
        for c in commands(readonly)
        if c.key is not None
    ]


def for_view(view: str, readonly: bool) -> list[Command]:
    """The commands that apply in one view, for the palette."""
    return [c for c in commands(readonly) if c.view in (None, view)]


def check_unique(cmds: Iterable[Command]) -> list[str]:
    """Keys bound twice within one view (the registry must have none)."""
    seen: dict[tuple[str | None, str], str] = {}
    clashes = []
    globals_ = {c.key for c in cmds if c.view is None and c.key}
    for c in cmds:
        if c.key is None:
            continue
        if c.view is not None and c.key in globals_:
            clashes.append(f"{c.key} in {c.view} clashes with a global key")
        where = (c.view, c.key)
        if where in seen and seen[where] != c.action:
            clashes.append(f"{c.key} in {c.view}: {seen[where]} and {c.action}")
        seen[where] = c.action
    return clashes


def markdown(readonly: bool = False) -> str:
    """The keys as a Markdown table (docs/console.md is made from it)."""
    lines = ["| key | does | where |", "|---|---|---|"]
    seen: set[tuple[str, str]] = set()
    for c in commands(readonly):
        if c.key is None or c.group == "Sort":
            continue
        views = sorted({x.view or "every view" for x in REGISTRY if x.action == c.action})
        if (c.key_text, c.description) in seen:
            continue
        seen.add((c.key_text, c.description))
        lines.append(f"| `{c.key_text}` | {c.description} | {', '.join(views)} |")
    sorts: dict[str, list[str]] = {}
    for c in commands(readonly):
        if c.group == "Sort" and c.view:
            sorts.setdefault(c.view, []).append(f"`{c.key_text}` {c.description[8:]}")
    for view, keys in sorts.items():
        lines.append(f"| sort | {', '.join(keys)} | {view} |")
    return "\n".join(lines)
