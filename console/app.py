"""`infermesh-console`: the App, its live feed, and `main()`.

The app owns the data: a `Source` (the API through the SDK, or fixed data), the `ConsoleState`,
and the `Coalescer` its stream workers fill. One `@work` worker per stream (a watch per kind,
the events stream, the SLO and SLI polls, the health probe), none of which touches a widget:
`flush`, on a timer at most four times a second, applies what arrived and tells the browser
screen which rows changed. Actions run in workers too, so the UI never waits on the network.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any

from textual import work
from textual.app import App

from infermesh.client import AsyncMeshClient
from infermesh.console import actions, feed
from infermesh.console.browser import BrowserScreen, browser_screen
from infermesh.console.config import Settings, settings
from infermesh.console.header import HeaderBar
from infermesh.console.palette import ConsoleCommands
from infermesh.console.source import MeshSource
from infermesh.console.state import ConsoleState
from infermesh.console.theme import THEMES, theme_name
from infermesh.console.views import WATCHED
from infermesh.console.views.base import Ctx, utc_now
from infermesh.errors import MeshError

log = logging.getLogger(__name__)

RETRY_S = 2.0  # a stream that gave up (the SDK could not resume it for 30 s) starts again
REFUSED_RETRY_S = 10.0  # a stream the API refused (401, 403) is tried again, less often
POLL_S = 10.0  # SLO evaluations and SLI totals: the evaluator's and the routers' pace
HEALTH_S = 1.0
AGES_S = 5.0  # ages on screen move on


class ConsoleApp(App[None]):
    TITLE = "InferMesh"
    COMMANDS = App.COMMANDS | {ConsoleCommands}
    ENABLE_COMMAND_PALETTE = True

    def __init__(
        self,
        source: Any,
        *,
        config: Settings | None = None,
        clock: Callable[[], datetime] | None = None,
        first_view: str = "nodes",
    ) -> None:
        """`source`: a MeshSource or StaticSource (console/source.py). `clock` is the time ages
        and the header show (tests freeze it)."""
        super().__init__()
        self.source = source
        self.settings = config or Settings(
            api_url=source.label, token=None, project=source.project, context="local"
        )
        self.clock = clock or utc_now
        self.first_view = first_view
        self.state = ConsoleState()
        self.buffer = feed.Coalescer()
        self.flushes = 0
        self.link = ("connecting", "")
        self._frozen = False
        self.refused: dict[str, str] = {}  # streams the API refused (401/403): their message

    # --- lifecycle -------------------------------------------------------------------------

    def get_default_screen(self) -> BrowserScreen:
        return browser_screen(self.settings.readonly, self.first_view)

    @property
    def browser(self) -> BrowserScreen:
        screen = self.screen_stack[0]
        assert isinstance(screen, BrowserScreen)
        return screen

    def on_mount(self) -> None:
        for theme in THEMES:
            self.register_theme(theme)
        self.theme = theme_name(self.settings.production)
        self.set_link("connecting")
        for kind in WATCHED:
            self.stream_kind(kind)
        self.stream_events()
        self.poll_kind("slos", self.source.slos)
        self.poll_kind("metrics", self.source.metrics)
        self.watch_health()
        self.set_interval(feed.FLUSH_S, self.flush)
        self.set_interval(AGES_S, self.tick)

    async def on_unmount(self) -> None:
        self.workers.cancel_all()
        await self.source.close()

    def ctx(self) -> Ctx:
        return Ctx(self.clock(), self.state)

    # --- live data -------------------------------------------------------------------------

    def flush(self) -> None:
        """Apply what the streams delivered since the last flush, and redraw what changed."""
        if not self.buffer:
            return
        changed = {
            batch.kind: self.state.apply(batch.kind, batch.changes, batch.reset)
            for batch in self.buffer.drain()
        }
        for kind in changed:  # it delivers: whatever refused it before is over
            self.refused.pop(kind, None)
        self.flushes += 1
        if self.screen_stack:
            self.browser.note_changes(changed)
        if not self._frozen and all(kind in self.state.objects for kind in WATCHED):
            # What exists once everything is listed (Textual's widgets, the fleet as first
            # seen) lives long: out of the collector's way, full collections stay short.
            self._frozen = True
            gc.collect()
            gc.freeze()

    def tick(self) -> None:
        self.browser.tick()

    def set_link(self, state: str, detail: str = "") -> None:
        """How the connection is (live, stale, lost), for the header. A stream the API
        refuses (the token) outranks a healthy API."""
        if state == "live" and self.refused:
            what, message = next(iter(self.refused.items()))
            state, detail = "refused", f"{what}: {message}"
        self.link = (state, detail)
        if self.screen_stack:
            for header in self.browser.query(HeaderBar):
                header.link, header.link_detail = state, detail

    async def _keep(self, what: str, run: Callable[[], Awaitable[None]]) -> None:
        """Run a stream for good: when it fails (the SDK gave up resuming it), say so in the
        header and start it again."""
        while True:
            try:
                await run()
            except asyncio.CancelledError:
                raise
            except MeshError as exc:
                if exc.status in (401, 403):  # the token: trying again soon will not help
                    self.refused[what] = exc.message
                    self.set_link("refused", f"{what}: {exc.message}")
                    await asyncio.sleep(REFUSED_RETRY_S)
                    continue
                self.set_link("lost", exc.message)
            except Exception as exc:  # a decoding error, a bug: keep the console up
                log.exception("%s stream failed", what)
                self.set_link("lost", f"{what}: {exc}")
            await asyncio.sleep(RETRY_S)

    @work(group="streams", exit_on_error=False)
    async def stream_kind(self, kind: str) -> None:
        await self._keep(kind, lambda: feed.follow(self.source, kind, self.buffer))

    @work(group="streams", exit_on_error=False)
    async def stream_events(self) -> None:
        await self._keep("events", lambda: feed.follow_events(self.source, self.buffer))

    @work(group="streams", exit_on_error=False)
    async def poll_kind(self, kind: str, fetch: Callable[[], Awaitable[Any]]) -> None:
        await self._keep(kind, lambda: feed.poll(fetch, kind, self.buffer, POLL_S))

    @work(group="streams", exit_on_error=False)
    async def watch_health(self) -> None:
        while True:
            try:
                self.set_link(await self.source.health())
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.set_link("lost", getattr(exc, "message", str(exc)))
            await asyncio.sleep(HEALTH_S)

    # --- actions ---------------------------------------------------------------------------

    def perform(
        self, spec: actions.ActionSpec, targets: Sequence[dict[str, Any]], form: dict[str, Any]
    ) -> None:
        self.run_worker(
            self._perform(spec, list(targets), form), group="actions", exit_on_error=False
        )

    async def _perform(
        self, spec: actions.ActionSpec, targets: list[dict[str, Any]], form: dict[str, Any]
    ) -> None:
        for outcome in await actions.perform(self.source, spec, targets, form):
            if outcome.ok:
                self.notify(outcome.message, title=spec.label)
                continue
            self.notify(outcome.message, title=spec.label, severity="error", timeout=10)
            self.local_event(spec, targets, outcome)

    def local_event(
        self, spec: actions.ActionSpec, targets: list[dict[str, Any]], outcome: actions.Outcome
    ) -> None:
        """An action the API refused, listed in the events view with the mesh's events."""
        project = next(
            (
                (t.get("metadata") or {}).get("project")
                for t in targets
                if (t.get("metadata") or {}).get("name") == outcome.name
            ),
            None,
        )
        stamp = self.clock().isoformat(timespec="milliseconds").replace("+00:00", "Z")
        event = {
            "id": f"console-{uuid.uuid4().hex[:12]}",
            "time": stamp,
            "type": "Warning",
            "reason": "ActionFailed",
            "kind": spec.plural.rstrip("s").capitalize(),
            "name": outcome.name,
            "project": project or self.settings.project,
            "actor": "console",
            "message": outcome.message,
        }
        self.buffer.put("events", event["id"], event)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        config = settings(argv)
    except MeshError as exc:
        print(f"infermesh-console: {exc.message}", file=sys.stderr)
        return 2
    source: Any
    if config.demo:
        from infermesh.console import demo

        source = demo.source()
    else:
        client = AsyncMeshClient(config.api_url, config.token, project=config.project)
        source = MeshSource(client)
    ConsoleApp(source, config=config).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
