"""The console's one screen: a table per view (made on first visit, kept while the console runs
so each keeps its sort, filter, marks and cursor), the `:`/`/` prompt, the detail pane, the
header and crumbs, and every key of commands.py.

View-specific keys are all bound at once; `check_action` switches off those of other views and,
read-only, every action (a binding whose check is False is neither shown nor run). Tables off
screen are not redrawn as data arrives: the keys that changed wait in `pending`, and the table
catches up when it comes back.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from textual import events
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.screen import Screen
from textual.widgets import ContentSwitcher, DataTable, Input, Label

from infermesh.console import actions, commands, feed
from infermesh.console.csv_export import export_dir, export_path, write_csv
from infermesh.console.detail import DetailPane
from infermesh.console.dialogs import ConfirmScreen, DrainScreen, ScaleScreen, SplitScreen
from infermesh.console.filter import FilterError, parse
from infermesh.console.header import Crumbs, HeaderBar, KeyBar
from infermesh.console.help import HelpScreen, help_rows
from infermesh.console.history import History, Place
from infermesh.console.table import ResourceTable
from infermesh.console.views import VIEWS, view_for
from infermesh.console.views import endpoints as endpoint_view
from infermesh.console.views import events as event_view
from infermesh.console.views import jobs as job_view

if TYPE_CHECKING:
    from infermesh.console.app import ConsoleApp

Obj = dict[str, Any]
ALL = None  # every row of a table is pending


class BrowserScreen(Screen[None]):
    """Subclassed per console by `browser_screen`, with the bindings its mode allows."""

    DEFAULT_CSS = """
    BrowserScreen { layout: vertical; overflow: hidden; }
    BrowserScreen #tables { height: 1fr; }
    BrowserScreen #promptbar { height: 1; display: none; background: $panel; }
    BrowserScreen #promptbar.open { display: block; }
    BrowserScreen #promptbar Label { width: auto; padding: 0 1; color: $accent; text-style: bold; }
    BrowserScreen #promptbar Input { border: none; height: 1; padding: 0; width: 1fr; }
    """

    def __init__(self, readonly: bool, first: str = "nodes") -> None:
        super().__init__()
        self.readonly = readonly
        self.history = History(Place(first))
        self.tables: dict[Place, ResourceTable] = {}
        self.pending: dict[Place, set[str] | None] = {}
        self.prompt_mode = "command"
        self.warnings_only = False

    @property
    def console(self) -> ConsoleApp:
        return cast("ConsoleApp", self.app)

    @property
    def place(self) -> Place:
        return self.history.current

    @property
    def view_name(self) -> str:
        return self.place.view

    @property
    def table(self) -> ResourceTable | None:
        return self.tables.get(self.place)

    def compose(self) -> ComposeResult:
        s = self.console.settings
        yield HeaderBar(
            s.context,
            self.console.source.label,
            s.project,
            readonly=s.readonly,
            production=s.production,
            clock=self.console.clock,
        )
        yield Crumbs(id="crumbs")
        yield ContentSwitcher(id="tables")
        yield DetailPane()
        with Horizontal(id="promptbar"):
            yield Label(":", id="promptlabel")
            yield Input(id="prompt")
        yield KeyBar()

    async def on_mount(self) -> None:
        await self.show(self.place)

    # --- views -----------------------------------------------------------------------------

    async def show(self, place: Place) -> None:
        """Put `place`'s table on screen (making it on the first visit) and bring it up to
        date."""
        table = self.tables.get(place)
        switcher = self.query_one("#tables", ContentSwitcher)
        if table is None:
            table = ResourceTable(VIEWS[place.view], place.param, id=f"table-{len(self.tables)}")
            if place.view == "events" and self.warnings_only:
                table.model.keep = event_view.is_warning
            self.tables[place] = table
            self.pending[place] = ALL
            await switcher.mount(table)
        switcher.current = table.id
        self.sync(place)
        detail = self.query_one(DetailPane)
        if detail.is_open:
            detail.close()
        self.set_focus(table)  # at once: keys typed right after the switch go to this table
        self.refresh_bindings()
        self.update_crumbs()

    def note_changes(self, changed: dict[str, set[str]]) -> None:
        """Collections that changed (keys by collection): mark the tables that show them, and
        redraw the one on screen."""
        for place, table in self.tables.items():
            spec = table.spec
            if any(kind in changed for kind in spec.depends):
                self.pending[place] = ALL
            elif spec.kind in changed and self.pending.get(place, set()) is not ALL:
                waiting = self.pending.setdefault(place, set())
                assert waiting is not None
                waiting |= changed[spec.kind]
        if self.place in self.pending:
            self.sync(self.place)
        detail = self.query_one(DetailPane)
        if detail.is_open and detail.key is not None:
            self.run_worker(self.refresh_detail(), group="detail", exclusive=True)

    def sync(self, place: Place) -> None:
        """Bring one table up to date with what is pending for it."""
        table = self.tables.get(place)
        if table is None or place not in self.pending:
            return
        dirty = self.pending.pop(place)
        objects = table.spec.rows(self.console.state, place.param)
        ctx = self.console.ctx()
        if dirty is ALL:
            delta = feed.resync(objects, table.model, ctx)
        else:
            delta = feed.apply({k: objects.get(k) for k in dirty}, table.model, ctx)
        table.apply_delta(delta)
        if place == self.place:
            self.update_crumbs()

    def tick(self) -> None:
        """Time passed: the ages in the table on screen move on."""
        table = self.table
        if table is None:
            return
        objects = table.spec.rows(self.console.state, self.place.param)
        table.apply_delta(feed.tick(objects, table.model, self.console.ctx()))

    async def go(self, place: Place) -> None:
        self.history.go(place)
        await self.show(place)

    def update_crumbs(self) -> None:
        table = self.table
        if table is None:
            return
        spec = table.spec
        title = spec.title + (f": {self.place.param.split('/', 1)[1]}" if self.place.param else "")
        column = spec.column(table.sort_column)
        sort = (
            f"{column.header if column else table.sort_column}{'↓' if table.sort_reverse else '↑'}"
        )
        extra = "warnings only" if spec.name == "events" and self.warnings_only else ""
        self.query_one(Crumbs).show(
            title,
            table.row_count,
            len(spec.rows(self.console.state, self.place.param)),
            filter_text=table.model.filter.text if table.model.filter else None,
            sort=sort,
            marked=len(table.marks),
            extra=extra,
        )

    # --- keys ------------------------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "act":
            spec = actions.BY_ID.get(str(parameters[0]))
            return bool(spec and not self.readonly and self.view_name in spec.views)
        if action == "sort":
            return parameters[0] == self.view_name
        if action == "toggle_warnings":
            return self.view_name == "events"
        if action == "describe":
            return VIEWS[self.view_name].describe is not None
        return True

    async def action_goto(self, name: str) -> None:
        await self.go(Place(name))

    async def action_last_view(self) -> None:
        place = self.history.last()
        if place is not None:
            await self.show(place)

    async def action_history_back(self) -> None:
        place = self.history.back()
        if place is not None:
            await self.show(place)

    async def action_history_forward(self) -> None:
        place = self.history.forward()
        if place is not None:
            await self.show(place)

    async def action_escape(self) -> None:
        bar = self.query_one("#promptbar")
        table = self.table
        if bar.has_class("open"):
            self.close_prompt()
        elif table is not None and table.model.filter is not None:
            self.set_filter(None)
        elif self.query_one(DetailPane).is_open:
            self.query_one(DetailPane).close()
        else:
            await self.action_history_back()

    def action_prompt(self, mode: str) -> None:
        """Open the `:` or `/` prompt. Its keys are priority bindings, so the prompt opens (and
        takes the focus) before the keys typed after them are routed: a fast typist or a paste
        lands in the prompt. Typed in the open prompt, they are just characters."""
        bar = self.query_one("#promptbar")
        field = self.query_one("#prompt", Input)
        if bar.has_class("open"):  # a character of the prompt: after the keys before it
            char = ":" if mode == "command" else "/"
            field.post_message(events.Key("colon" if char == ":" else "slash", char))
            return
        self.prompt_mode = mode
        self.query_one("#promptlabel", Label).update(":" if mode == "command" else "/")
        table = self.table
        if mode == "filter" and table is not None and table.model.filter is not None:
            field.value = table.model.filter.text
        else:
            field.value = ""
        field.placeholder = (
            "view: nodes no | endpoints ep | jobs | slo | events ev | domains | pools | ..."
            if mode == "command"
            else "regex; !regex inverts; key=value on labels or columns"
        )
        bar.add_class("open")
        self.set_focus(field)  # now, not after the keys already typed (a fast typist, a paste)

    def close_prompt(self) -> None:
        self.query_one("#promptbar").remove_class("open")
        if self.table is not None:
            self.set_focus(self.table)

    async def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id != "prompt":
            return
        event.stop()
        text = event.value.strip()
        self.close_prompt()
        if self.prompt_mode == "filter":
            self.set_filter(text)
        elif text in ("q", "q!", "quit"):
            self.app.exit()
        elif text:
            view = view_for(text)
            if view is None:
                self.notify(f"no view {text!r}: try nodes, ep, jobs, slo, ev", severity="error")
            else:
                await self.go(Place(view.name))

    def set_filter(self, text: str | None) -> None:
        table = self.table
        if table is None:
            return
        try:
            table.model.filter = parse(text or "")
        except FilterError as exc:
            self.notify(str(exc), severity="error")
            return
        feed.resync(
            table.spec.rows(self.console.state, self.place.param), table.model, self.console.ctx()
        )
        table.rebuild()
        self.update_crumbs()

    def action_sort(self, view: str, column: str) -> None:
        if self.table is not None:
            self.table.sort_by(column)
            self.update_crumbs()

    def action_mark(self) -> None:
        if self.table is not None:
            self.table.toggle_mark()
            self.update_crumbs()

    def action_clear_marks(self) -> None:
        if self.table is not None:
            self.table.clear_marks()
            self.update_crumbs()

    def action_toggle_warnings(self) -> None:
        self.warnings_only = not self.warnings_only
        table = self.table
        if table is None:
            return
        table.model.keep = event_view.is_warning if self.warnings_only else None
        feed.resync(table.spec.rows(self.console.state, None), table.model, self.console.ctx())
        table.rebuild()
        self.update_crumbs()

    def action_help(self) -> None:
        rows = help_rows(self.active_bindings, self.app)
        self.app.push_screen(HelpScreen(rows, VIEWS[self.view_name].title, self.readonly))

    def action_save_csv(self) -> None:
        table = self.table
        if table is None:
            return
        path = export_path(table.spec.name, self.console.clock(), export_dir())
        try:
            write_csv(path, table.headers, table.visible_rows())
        except OSError as exc:
            self.notify(f"could not save {path}: {exc}", severity="error")
            return
        self.notify(f"saved {table.row_count} rows to {path}", title="CSV")

    # --- rows ------------------------------------------------------------------------------

    def current_object(self, key: str | None = None) -> Obj | None:
        table = self.table
        key = key or (table.cursor_key if table else None)
        if table is None or key is None:
            return None
        return table.spec.rows(self.console.state, self.place.param).get(key)

    async def action_describe(self) -> None:
        detail = self.query_one(DetailPane)
        if detail.is_open:
            detail.close()
        else:
            await self.refresh_detail(force=True)

    async def refresh_detail(self, force: bool = False) -> None:
        detail, table = self.query_one(DetailPane), self.table
        if table is None or table.spec.describe is None or not (force or detail.is_open):
            return
        key = table.cursor_key
        obj = self.current_object(key)
        if obj is None:
            detail.close()
            return
        history = self.console.state.util.get(key or "") if table.spec.kind == "nodes" else None
        await detail.show(key, table.spec.describe(obj, self.console.ctx()), history)

    async def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if self.query_one(DetailPane).is_open:
            await self.refresh_detail()

    async def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        """Enter: endpoints drill to their replicas, replicas open their node, the rest
        describe the row."""
        table = self.table
        if table is None or event.row_key.value is None:
            return
        key = event.row_key.value
        if table.spec.drill == "replicas":
            await self.go(Place("replicas", key))
        elif table.spec.drill == "nodes":
            await self.go(Place("nodes"))
            nodes = self.table
            if nodes is not None and key in nodes.model.shown:
                nodes.move_cursor(row=nodes.get_row_index(key))
                await self.refresh_detail(force=True)
        else:
            await self.refresh_detail(force=True)

    # --- actions ---------------------------------------------------------------------------

    def action_act(self, action_id: str) -> None:
        spec = actions.BY_ID[action_id]
        table = self.table
        if self.readonly or table is None:
            return
        objects = table.spec.rows(self.console.state, self.place.param)
        targets = [objects[k] for k in table.selection() if k in objects]
        if not targets:
            self.notify("no row selected", severity="warning")
            return
        dialog: ConfirmScreen
        if spec.dialog in ("split", "scale") and len(targets) > 1:
            self.notify(
                f"{spec.label} acts on one {spec.noun(1)} at a time: clear the marks (ctrl+u)",
                severity="warning",
            )
            return
        if spec.dialog == "drain":
            dialog = DrainScreen(spec, targets)
        elif spec.dialog == "scale":
            low, high = job_view.gpu_range(targets[0])
            dialog = ScaleScreen(spec, targets, low, high)
        elif spec.dialog == "split":
            dialog = SplitScreen(spec, targets, endpoint_view.split_entries(targets[0]))
        else:
            dialog = ConfirmScreen(spec, targets)

        def confirmed(form: Obj | None) -> None:
            if form is not None:
                self.console.perform(spec, targets, form)
                if len(targets) > 1:
                    table.clear_marks()
                    self.update_crumbs()

        self.app.push_screen(dialog, confirmed)


def browser_screen(readonly: bool, first: str = "nodes") -> BrowserScreen:
    """The browser with the registry's bindings; read-only, the actions are not bound at all."""
    screen_class = type(
        "ReadOnlyBrowser" if readonly else "Browser",
        (BrowserScreen,),
        {
            "BINDINGS": cast(
                list[Binding | tuple[str, str] | tuple[str, str, str]], commands.bindings(readonly)
            )
        },
    )
    return screen_class(readonly, first)
