"""The two lines at the top: where the console is connected and how that connection is (the
header), and where the user is in it (the crumbs: view, rows, filter, sort, marks)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from rich.text import Text
from textual.content import Content
from textual.reactive import reactive
from textual.screen import Screen
from textual.widgets import Static

LINK_STYLE = {
    "live": ("● live", "bold green"),
    "connecting": ("◌ connecting", "bold yellow"),
    "stale": ("● etcd down: answers are stale", "bold yellow"),
    "lost": ("✖ API unreachable: reconnecting", "bold red"),
    "refused": ("✖ refused by the API", "bold red"),
}


class HeaderBar(Static):
    DEFAULT_CSS = """
    HeaderBar { height: 1; background: $primary; color: $text; text-style: bold; }
    """

    link: reactive[str] = reactive("connecting")
    link_detail: reactive[str] = reactive("")

    def __init__(
        self,
        context: str,
        api: str,
        project: str,
        *,
        readonly: bool,
        production: bool,
        clock: Callable[[], datetime],
    ) -> None:
        super().__init__(id="header")
        self.context, self.api, self.project = context, api, project
        self.readonly, self.production = readonly, production
        self.clock = clock

    def on_mount(self) -> None:
        self.link, self.link_detail = getattr(self.app, "link", ("connecting", ""))
        self.set_interval(1.0, self.refresh)

    def render(self) -> Text:
        text, style = LINK_STYLE.get(self.link, (self.link, "bold"))
        parts: list[str | tuple[str, str]] = [
            (" InferMesh ", "bold reverse"),
            f" ctx {self.context}",
            (" PRODUCTION", "bold") if self.production else "",
            f"  api {self.api}  project {self.project}  ",
            (text, style),
        ]
        if self.link_detail and self.link != "live":
            parts.append((f" ({self.link_detail[:60]})", "italic"))
        if self.readonly:
            parts += ["  ", (" RO ", "bold reverse")]
        parts.append(f"  {self.clock():%H:%M:%S} UTC")
        return Text.assemble(*parts, no_wrap=True, overflow="ellipsis")


class Crumbs(Static):
    DEFAULT_CSS = """
    Crumbs { height: 1; background: $panel; color: $text; padding: 0 1; }
    """

    def show(
        self,
        title: str,
        rows: int,
        total: int,
        *,
        filter_text: str | None,
        sort: str,
        marked: int,
        extra: str = "",
    ) -> None:
        parts: list[str | tuple[str, str]] = [
            (f"<{title}>", "bold"),
            f" {rows}" + (f"/{total}" if rows != total else "") + " rows",
            f"  sort {sort}",
        ]
        if filter_text:
            parts.append(("  filter /" + filter_text, "bold yellow"))
        if marked:
            parts.append((f"  {marked} marked", "bold magenta"))
        if extra:
            parts.append((f"  {extra}", "bold cyan"))
        self.update(Text.assemble(*parts, no_wrap=True, overflow="ellipsis"))


class KeyBar(Static):
    """The footer: the keys of the view on screen (those marked to show), as one line of text.
    Lighter than Textual's Footer, which rebuilds a widget per key whenever bindings change."""

    DEFAULT_CSS = """
    KeyBar { dock: bottom; height: 1; background: $panel; color: $text-muted; padding: 0 1; }
    """

    def on_mount(self) -> None:
        self.screen.bindings_updated_signal.subscribe(self, self._changed)
        self._changed(self.screen)

    def _changed(self, screen: Screen[object]) -> None:
        if screen is not self.screen:
            return
        parts: list[str | tuple[str, str]] = []
        seen: set[str] = set()
        for active in screen.active_bindings.values():
            binding = active.binding
            if not binding.show or binding.action in seen:
                continue
            seen.add(binding.action)
            parts += [
                (self.app.get_key_display(binding), "bold $accent"),
                f" {binding.description}  ",
            ]
        self.update(Content.assemble(*parts))
