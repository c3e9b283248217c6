"""`ResourceTable`: one view's DataTable, updated by row key from `feed.Delta`s.

Rows are keyed by `project/name` (events by id). A delta adds and removes rows and rewrites only
the cells that changed (`update_cell`); the table is sorted again only when rows came or a cell
of the sort column changed, and the cursor stays on the row it was on. A mark column at the
left shows the rows marked with space.
"""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual.binding import Binding, BindingType
from textual.widgets import DataTable
from textual.widgets.data_table import ColumnKey, RowDoesNotExist

from infermesh.console.feed import Delta, TableState
from infermesh.console.views.base import Cell, ViewSpec

MARK_COLUMN = "_mark"
MARK = "●"
REBUILD_AT = 200  # more removals than this in one delta: rebuild instead (remove_row is O(n))


class ResourceTable(DataTable[Text]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "select_cursor", "Open / drill in", show=False)
    ]

    DEFAULT_CSS = """
    ResourceTable { height: 1fr; }
    ResourceTable > .datatable--header { text-style: bold; }
    """

    def __init__(self, spec: ViewSpec, param: str | None = None, *, id: str | None = None):
        super().__init__(cursor_type="row", zebra_stripes=False, id=id)
        self.spec = spec
        self.param = param
        self.model = TableState(spec)
        self.marks: set[str] = set()
        self.sort_column = spec.default_sort
        self.sort_reverse = spec.default_reverse
        self._index = {c.id: i for i, c in enumerate(spec.columns)}

    def on_mount(self) -> None:
        self.add_column(Text(" "), key=MARK_COLUMN, width=1)
        for column in self.spec.columns:
            self.add_column(self._label(column.id, column.header), key=column.id)

    # --- data ------------------------------------------------------------------------------

    @property
    def cursor_key(self) -> str | None:
        if not self.row_count:
            return None
        try:
            return self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value
        except RowDoesNotExist:
            return None

    def apply_delta(self, delta: Delta) -> None:
        """Redraw what `delta` says changed, keeping the cursor on its row."""
        if not delta:
            return
        at = self.cursor_key
        if len(delta.removed) > REBUILD_AT:
            self.rebuild()
        else:
            for key in delta.removed:
                self.remove_row(key)
                self.marks.discard(key)
            for key, cells in delta.added:
                self.add_row(self._mark_cell(key), *cells, key=key)
            for key, diff in delta.changed:
                for index, cell in diff.items():
                    self._update(key, self.spec.columns[index].id, cell)
            sort_index = self._index.get(self.sort_column)
            if sort_index is not None and delta.touches(sort_index):
                self._sort()
        self._restore_cursor(at)

    def rebuild(self) -> None:
        """Every row again from the model (after a new filter, or many removals)."""
        at = self.cursor_key
        self.clear()
        self.marks &= set(self.model.shown)
        for key, cells in self.model.shown.items():
            self.add_row(self._mark_cell(key), *cells, key=key)
        self._sort()
        self._restore_cursor(at)

    def _update(self, key: str, column: str, cell: Cell) -> None:
        width = self.columns[ColumnKey(column)].content_width
        self.update_cell(key, column, cell, update_width=cell.cell_len > width)

    def _restore_cursor(self, key: str | None) -> None:
        if key is None or key not in self.model.shown:
            return
        try:
            index = self.get_row_index(key)
        except RowDoesNotExist:
            return
        if index != self.cursor_row:
            self.move_cursor(row=index, animate=False, scroll=False)

    # --- sorting ---------------------------------------------------------------------------

    def sort_by(self, column: str) -> None:
        """Sort by `column`; the same column again reverses the order."""
        if column not in self._index:
            return
        old = self.sort_column
        if column == old:
            self.sort_reverse = not self.sort_reverse
        else:
            self.sort_column, self.sort_reverse = column, False
        for ident in {old, column}:
            spec_column = self.spec.column(ident)
            if spec_column is not None and ColumnKey(ident) in self.columns:
                self.columns[ColumnKey(ident)].label = self._label(ident, spec_column.header)
        at = self.cursor_key
        self._sort()
        self._restore_cursor(at)
        self.refresh()

    def _sort(self) -> None:
        if self.sort_column in self._index and self.row_count:
            self.sort(self.sort_column, key=lambda cell: cell.sort, reverse=self.sort_reverse)

    def _label(self, ident: str, header: str) -> Text:
        arrow = " "  # reserved, so the column keeps its width when the arrow comes
        if ident == self.sort_column:
            arrow = "↓" if self.sort_reverse else "↑"
        return Text(f"{header}{arrow}")

    # --- marks -----------------------------------------------------------------------------

    def toggle_mark(self) -> None:
        key = self.cursor_key
        if key is None:
            return
        if key in self.marks:
            self.marks.discard(key)
        else:
            self.marks.add(key)
        self.update_cell(key, MARK_COLUMN, self._mark_cell(key))
        if self.cursor_row + 1 < self.row_count:  # k9s moves on, so space marks a run
            self.move_cursor(row=self.cursor_row + 1)

    def clear_marks(self) -> None:
        for key in list(self.marks):
            self.marks.discard(key)
            if key in self.model.shown:
                self.update_cell(key, MARK_COLUMN, self._mark_cell(key))

    def _mark_cell(self, key: str) -> Text:
        return Text(MARK, style="bold magenta") if key in self.marks else Text(" ")

    # --- reading ---------------------------------------------------------------------------

    def selection(self) -> list[str]:
        """The marked rows (in table order), else the row under the cursor."""
        if self.marks:
            return [r.key.value for r in self.ordered_rows if r.key.value in self.marks]
        key = self.cursor_key
        return [key] if key is not None else []

    def visible_rows(self) -> list[list[str]]:
        """The rows as shown (filtered, sorted), as text, for export."""
        return [
            [cell.plain for cell in self.model.shown[r.key.value]]
            for r in self.ordered_rows
            if r.key.value in self.model.shown
        ]

    @property
    def headers(self) -> list[str]:
        return [c.header for c in self.spec.columns]
