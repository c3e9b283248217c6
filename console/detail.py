"""The detail pane under a table (`d`, or enter on a node): the view's `describe` of the row
under the cursor and, for nodes, a sparkline of each GPU's recent utilisation."""

from __future__ import annotations

import io
from collections import deque
from collections.abc import Mapping

from rich.console import Console, RenderableType
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import Label, Sparkline, Static


class GpuSparks(Vertical):
    """One labelled sparkline per GPU; rebuilt only when the number of GPUs changes."""

    DEFAULT_CSS = """
    GpuSparks { width: 44; height: auto; padding-left: 1; }
    GpuSparks > Horizontal { height: 1; }
    GpuSparks Label { width: 9; }
    GpuSparks Sparkline { width: 1fr; height: 1; }
    """

    def __init__(self) -> None:
        super().__init__(id="sparks")
        self._indexes: list[int] = []

    async def show(self, history: Mapping[int, deque[float]]) -> None:
        indexes = sorted(history)[:8]
        if indexes != self._indexes:
            await self.remove_children()
            await self.mount_all(
                Horizontal(
                    Label(f"gpu{i} util"),
                    Sparkline(
                        list(history[i]), id=f"spark-{i}", min_color="green", max_color="red"
                    ),
                )
                for i in indexes
            )
            self._indexes = indexes
            return
        for i in indexes:
            self.query_one(f"#spark-{i}", Sparkline).data = list(history[i])


class DetailPane(Horizontal):
    DEFAULT_CSS = """
    DetailPane { height: 14; border-top: solid $primary; display: none; }
    DetailPane.open { display: block; }
    DetailPane > VerticalScroll { width: 1fr; height: 100%; }
    """

    def __init__(self) -> None:
        super().__init__(id="detail")
        self.key: str | None = None  # the row it describes
        self.body: RenderableType = ""

    def compose(self) -> ComposeResult:
        with VerticalScroll():
            yield Static(id="describe")
        yield GpuSparks()

    @property
    def is_open(self) -> bool:
        return self.has_class("open")

    @property
    def text(self) -> str:
        """What the pane shows, as plain text."""
        console = Console(width=160, record=True, file=io.StringIO())
        console.print(self.body)
        return console.export_text()

    def close(self) -> None:
        self.remove_class("open")
        self.key = None

    async def show(
        self,
        key: str | None,
        body: RenderableType,
        history: Mapping[int, deque[float]] | None,
    ) -> None:
        self.key, self.body = key, body
        self.add_class("open")
        self.query_one("#describe", Static).update(body)
        sparks = self.query_one(GpuSparks)
        sparks.display = bool(history)
        if history:
            await sparks.show(history)
