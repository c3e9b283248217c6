"""`ctrl+p`: Textual's command palette, fed from the same registry as the keys: the views, and
the commands of the view on screen (none that change the mesh when read-only)."""

from __future__ import annotations

from functools import partial
from typing import Any

from textual.actions import parse
from textual.command import DiscoveryHit, Hit, Hits, Provider

from infermesh.console.commands import Command, for_view


class ConsoleCommands(Provider):
    def _commands(self) -> list[Command]:
        screen: Any = self.screen
        view = getattr(screen, "view_name", None)
        if view is None:  # the palette over another screen (a dialog): nothing of ours
            return []
        return [
            c
            for c in for_view(view, bool(getattr(screen, "readonly", True)))
            if screen.check_action(*_parse(c.action)) is not False
        ]

    def _title(self, command: Command) -> str:
        key = f" ({command.key_text})" if command.key else ""
        return f"{command.description}{key}"

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for command in self._commands():
            title = self._title(command)
            score = max(matcher.match(title), matcher.match(command.help) * 0.8)
            if score > 0:
                yield Hit(
                    score,
                    matcher.highlight(title),
                    partial(self.screen.run_action, command.action),
                    help=command.help or None,
                )

    async def discover(self) -> Hits:
        for command in self._commands():
            yield DiscoveryHit(
                self._title(command),
                partial(self.screen.run_action, command.action),
                help=command.help or None,
            )


def _parse(action: str) -> tuple[str, tuple[object, ...]]:
    """`sort('nodes', 'util')` as (name, params), as Textual's check_action sees it."""
    _, name, params = parse(action)
    return name, params
