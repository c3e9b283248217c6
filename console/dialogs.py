"""Confirmation dialogs: every action asks first, with Cancel focused, so a stray enter does
nothing. Each dialog dismisses with the form (reason, timeout, gpus, split) or None.

`ConfirmScreen` lists the targets and says what the action does; it asks for a reason when the
action takes one, and for the target's name (`typed_phrase`) when the action is one of those an
SRE must not do by accident. `DrainScreen` adds the timeout and force, `ScaleScreen` the GPU
count, `SplitScreen` the weights with a before/after preview.
"""

from __future__ import annotations

from typing import Any, ClassVar

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Checkbox, Input, Label, Static

from infermesh.console.actions import (
    ActionSpec,
    SplitError,
    parse_split,
    split_preview,
    split_text,
    typed_phrase,
)

Obj = dict[str, Any]


class ConfirmScreen(ModalScreen[Obj | None]):
    AUTO_FOCUS = "#cancel"
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]

    DEFAULT_CSS = """
    ConfirmScreen { align: center middle; }
    ConfirmScreen > #dialog {
        width: 84; max-width: 95%; height: auto; max-height: 90%;
        border: thick $primary; background: $surface; padding: 1 2;
    }
    ConfirmScreen.danger > #dialog { border: thick $error; }
    ConfirmScreen #title { text-style: bold; margin-bottom: 1; }
    ConfirmScreen #problem { color: $warning; height: auto; margin-top: 1; }
    ConfirmScreen Label { margin-top: 1; }
    ConfirmScreen #buttons { height: auto; margin-top: 1; align-horizontal: right; }
    ConfirmScreen Button { margin-left: 2; }
    """

    def __init__(self, spec: ActionSpec, targets: list[Obj]) -> None:
        super().__init__(classes="danger" if spec.typed else "")
        self.spec = spec
        self.targets = targets
        self.names = [str((t.get("metadata") or {}).get("name")) for t in targets]
        self.phrase = typed_phrase(spec, self.names)

    # --- layout ----------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        spec, names = self.spec, self.names
        shown = ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
        with Vertical(id="dialog"):
            yield Static(f"{spec.label} {spec.noun(len(names))} {shown}?", id="title")
            yield Static(Text(spec.what), id="what")
            yield from self.fields()
            if spec.reason != "none":
                yield Label("Reason" + (" (required)" if spec.reason == "required" else ""))
                yield Input(id="reason", placeholder="why, for the audit log")
            if spec.typed:
                yield Label(Text.assemble("Type ", (self.phrase, "bold"), " to confirm"))
                yield Input(id="typed", placeholder=self.phrase)
            yield Static("", id="problem")
            with Horizontal(id="buttons"):
                yield Button("Cancel", id="cancel")
                yield Button(spec.label, id="confirm", variant="error" if spec.typed else "primary")

    def fields(self) -> ComposeResult:
        """The dialog's own inputs, above reason and name (none for a plain confirmation)."""
        yield from ()

    def on_mount(self) -> None:
        self.validate()

    # --- answers ---------------------------------------------------------------------------

    def value(self, ident: str) -> str:
        found = self.query(f"#{ident}")
        return found.first(Input).value.strip() if found else ""

    def problem(self) -> str | None:
        """Why the action cannot be confirmed yet (None: it can)."""
        if self.spec.reason == "required" and not self.value("reason"):
            return "Say why: the reason goes to the audit log and the node's events."
        if self.spec.typed and self.value("typed") != self.phrase:
            return f"Type {self.phrase} to confirm."
        return None

    def form(self) -> Obj:
        return {"reason": self.value("reason")} if self.spec.reason != "none" else {}

    def validate(self) -> None:
        problem = self.problem()
        self.query_one("#confirm", Button).disabled = problem is not None
        self.query_one("#problem", Static).update(problem or "")

    def on_input_changed(self, event: Input.Changed) -> None:
        self.validate()

    def on_checkbox_changed(self, event: Checkbox.Changed) -> None:
        self.validate()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        if self.problem() is None:
            self.dismiss(self.form())

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        if event.button.id == "confirm" and self.problem() is None:
            self.dismiss(self.form())
        elif event.button.id == "cancel":
            self.dismiss(None)

    def action_cancel(self) -> None:
        self.dismiss(None)


class DrainScreen(ConfirmScreen):
    def fields(self) -> ComposeResult:
        yield Label("Timeout (seconds): in-flight requests get this long to finish")
        yield Input("300", id="timeout", type="integer")
        yield Checkbox("Force: stop what still runs at the timeout", id="force")

    def problem(self) -> str | None:
        timeout = self.value("timeout")
        if not timeout.isdigit():
            return "The timeout is a whole number of seconds."
        return super().problem()

    def form(self) -> Obj:
        force = self.query_one("#force", Checkbox).value
        return super().form() | {"timeoutSeconds": int(self.value("timeout")), "force": force}


class ScaleScreen(ConfirmScreen):
    def __init__(self, spec: ActionSpec, targets: list[Obj], low: int, high: int) -> None:
        super().__init__(spec, targets)
        self.low, self.high = low, high

    def fields(self) -> ComposeResult:
        current = ((self.targets[0].get("status") or {}).get("gpus")) if self.targets else None
        yield Label(f"GPUs (elastic range {self.low}..{self.high}; now {current or 0})")
        yield Input(str(self.high), id="gpus", type="integer")

    def problem(self) -> str | None:
        gpus = self.value("gpus")
        if not gpus.isdigit():
            return "The number of GPUs is a whole number."
        if not self.low <= int(gpus) <= self.high:
            return f"{gpus} lies outside the elastic range {self.low}..{self.high}."
        return super().problem()

    def form(self) -> Obj:
        return super().form() | {"gpus": int(self.value("gpus"))}


class SplitScreen(ConfirmScreen):
    """The weights as `revision=weight` pairs, prefilled with the current split, and a preview
    of every revision's weight before and after."""

    def __init__(self, spec: ActionSpec, targets: list[Obj], before: list[tuple[str, int]]):
        super().__init__(spec, targets)
        self.before = before
        self.model_ref = str(((targets[0].get("spec") or {}).get("modelRef")) or "")

    def fields(self) -> ComposeResult:
        yield Label(f"Weights of {self.model_ref.partition('@')[0]}'s revisions (revision=weight)")
        yield Input(split_text(self.before), id="split")
        yield Static(id="preview")

    def parsed(self) -> tuple[list[Obj] | None, str | None]:
        try:
            return parse_split(self.value("split"), self.model_ref), None
        except SplitError as exc:
            return None, str(exc)

    def validate(self) -> None:
        split, _ = self.parsed()
        table = Table("REVISION", "BEFORE", "", "AFTER", box=None, padding=(0, 1))
        rows = split_preview(self.before, split) if split else [(r, w, w) for r, w in self.before]
        for ref, old, new in rows:
            style = "bold green" if new > old else "bold red" if new < old else ""
            table.add_row(ref, f"{old}%", "->", Text(f"{new}%", style=style))
        self.query_one("#preview", Static).update(table)
        super().validate()

    def problem(self) -> str | None:
        split, error = self.parsed()
        if error:
            return error
        if split and [(e["modelRef"], e["weight"]) for e in split] == list(self.before):
            return "That is the split already."
        return super().problem()

    def form(self) -> Obj:
        split, _ = self.parsed()
        return super().form() | {"split": split}
