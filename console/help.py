"""`?`: the keys that work right now, read from the screen's live bindings (so a read-only
console, or another view, shows exactly what it has), grouped as the registry groups them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from rich.table import Table
from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import ActiveBinding, Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from infermesh.console.commands import BY_ACTION

ORDER = ("Navigation", "Table", "Sort", "Actions", "App")
HelpRow = tuple[str, str, str]  # group, key, description


# Keys of the table and the app worth listing (the rest are Textual's own: copy, focus...).
OTHER_KEYS = {"enter", "up", "down", "pageup", "pagedown", "home", "end", "ctrl+q", "ctrl+p"}


def help_rows(bindings: Mapping[str, ActiveBinding], app: App[object]) -> list[HelpRow]:
    """(group, key, description) of every live binding that has a description."""
    rows: list[HelpRow] = []
    for key_name, active in bindings.items():
        binding: Binding = active.binding
        if not binding.description:
            continue
        command = BY_ACTION.get(binding.action)
        if command is not None:
            group, key = command.group, command.key_text
        elif key_name in OTHER_KEYS:
            group = "App" if active.node is app else "Table"
            key = app.get_key_display(binding)
        else:
            continue
        rows.append((group, key, binding.description))
    rows.sort(key=lambda r: (ORDER.index(r[0]) if r[0] in ORDER else len(ORDER), r[1].lower()))
    return rows


def _group_table(rows: list[HelpRow], groups: tuple[str, ...]) -> Table:
    table = Table(box=None, padding=(0, 1), show_header=False, expand=False)
    table.add_column(style="bold cyan", no_wrap=True)
    table.add_column(no_wrap=True)
    for group in groups:
        members = [r for r in rows if r[0] == group]
        if not members:
            continue
        if table.row_count:
            table.add_row("", "")
        table.add_row(Text(group, style="bold underline"), "")
        for _, key, description in members:
            table.add_row(key, description)
    return table


def render_help(rows: list[HelpRow], title: str, readonly: bool) -> Table:
    """The groups side by side, k9s-style: navigation and actions, the table, sorting."""
    outer = Table.grid(padding=(0, 4))
    columns = (("Navigation", "Actions", "App"), ("Table",), ("Sort",))
    for _ in columns:
        outer.add_column(vertical="top")
    outer.add_row(*(_group_table(rows, groups) for groups in columns))
    outer.title = f"Keys in {title}" + (
        "  [RO: read-only, actions are switched off]" if readonly else ""
    )
    return outer


class HelpScreen(ModalScreen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "dismiss", "Close"),
        Binding("question_mark", "dismiss", "Close"),
        Binding("q", "dismiss", "Close"),
    ]
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > VerticalScroll {
        width: 124; max-width: 98%; height: auto; max-height: 90%;
        border: thick $primary; background: $surface; padding: 0 2;
    }
    """

    def __init__(self, rows: list[HelpRow], title: str, readonly: bool) -> None:
        super().__init__()
        self.rows = rows
        self.view_title = title
        self.readonly = readonly

    def compose(self) -> ComposeResult:
        with VerticalScroll():
            yield Static(render_help(self.rows, self.view_title, self.readonly), id="help")

    async def action_dismiss(self, result: None = None) -> None:
        self.dismiss(None)
