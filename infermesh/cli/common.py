"""What every command shares: the per-invocation state (context, client), error output,
confirmation of destructive actions, and option helpers."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn, TypeVar

import click

from infermesh.client import ApplyResult, MeshClient
from infermesh.context import Context, load_context
from infermesh.errors import BadRequest, MeshError
from infermesh.manifest import load_paths
from infermesh.model import kind_for

F = TypeVar("F", bound=Callable[..., Any])

STALE_WARNING = "Warning: etcd is unavailable; showing the API's last-known state (stale)"


@dataclass
class CliState:
    """Global options of one invocation; the context and client are made on first use, so
    commands that need neither (version, api) work without a context file."""

    api: str | None = None
    token: str | None = None
    project: str | None = None
    _context: Context | None = field(default=None, repr=False)
    _client: MeshClient | None = field(default=None, repr=False)

    @property
    def context(self) -> Context:
        if self._context is None:
            self._context = load_context(api=self.api, token=self.token, project=self.project)
        return self._context

    @property
    def client(self) -> MeshClient:
        if self._client is None:
            self._client = MeshClient.from_context(self.context)
            click.get_current_context().call_on_close(self._client.close)
        return self._client


pass_state = click.make_pass_decorator(CliState, ensure=True)


def kind_name(word: str) -> str:
    """The kind a word names ("ep" -> "Endpoint"); an unknown word raises NotFound."""
    return kind_for(word).__name__


def warn(message: str) -> None:
    click.echo(message, err=True)


def fail(message: str) -> NoReturn:
    """Print `error: message` and exit 1."""
    click.echo(f"error: {message}", err=True)
    raise click.exceptions.Exit(1)


def format_error(exc: MeshError) -> str:
    """`error: message`, then the field errors the server listed (422) that the message does
    not already spell out."""
    lines = [f"error: {exc.message}"]
    for item in exc.details.get("errors") or []:
        if isinstance(item, dict):
            where = item.get("field") or ""
            what = item.get("message") or ""
            line = f"{where}: {what}" if where else str(what)
        else:
            line = str(item)
        if line not in exc.message:
            lines.append(f"  - {line}")
    return "\n".join(lines)


class MeshGroup(click.Group):
    """A group that turns every MeshError into `error: ...` on stderr and exit status 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except MeshError as exc:
            click.echo(format_error(exc), err=True)
            ctx.exit(1)


def stale_warning(stale: bool) -> None:
    if stale:
        warn(STALE_WARNING)


def stdin_is_terminal() -> bool:
    return sys.stdin.isatty()


def confirm(action: str, *, yes: bool, type_to_confirm: str | None = None) -> None:
    """Ask before a destructive action; `type_to_confirm` makes the user type that word.

    Without a terminal there is nobody to ask, so refuse unless --yes was given."""
    if yes:
        return
    if not stdin_is_terminal():
        fail(f"refusing to {action} without confirmation (no terminal to ask on); pass --yes")
    if type_to_confirm is None:
        if not click.confirm(f"{action[0].upper()}{action[1:]}?", default=False, err=True):
            fail("aborted; nothing was changed")
        return
    answer = click.prompt(
        f"{action[0].upper()}{action[1:]}? Type {type_to_confirm!r} to confirm",
        default="",
        show_default=False,
        err=True,
    )
    if answer.strip() != type_to_confirm:
        fail(f"confirmation did not match {type_to_confirm!r}; nothing was changed")


def output_option(*choices: str, default: str) -> Callable[[F], F]:
    return click.option(
        "-o",
        "--output",
        "output",
        type=click.Choice(choices),
        default=default,
        show_default=True,
        help="Output format.",
    )


def yes_option(f: F) -> F:
    return click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")(f)


def files_option(f: F) -> F:
    return click.option(
        "-f",
        "--filename",
        "files",
        multiple=True,
        required=True,
        help="YAML file, directory of YAML files, or - for stdin; repeatable.",
    )(f)


def load_manifests(
    files: Sequence[str], project: str, *, only_kind: str | None = None
) -> list[dict[str, Any]]:
    """Read and validate every document before anything is sent (all or nothing).

    Objects that name no project go to `project` (the -p / context project), as kubectl does
    with -n; status is the server's, so it is not sent."""
    resources = load_paths(files)
    if not resources:
        raise BadRequest(f"no objects found in {', '.join(files)}")
    if only_kind:
        others = [r for r in resources if r.kind != only_kind]
        if others:
            bad = ", ".join(f"{r.kind.lower()}/{r.metadata.name}" for r in others)
            raise BadRequest(f"expected only {only_kind} objects, found {bad}; use `mesh apply`")
    objects = []
    for r in resources:
        obj = {k: v for k, v in r.to_dict().items() if k != "status"}
        if "project" not in r.metadata.model_fields_set and not r.cluster_scoped:
            obj["metadata"]["project"] = project
        objects.append(obj)
    return objects


def print_apply(results: list[ApplyResult]) -> None:
    """kubectl-style lines (`endpoint/chat-pro created`) and warnings on stderr."""
    for r in results:
        ref = f"{r.kind.lower()}/{r.name}"
        for w in r.warnings:
            warn(f"Warning: {ref}: {w}")
        click.echo(f"{ref} {r.action}")


def stop_on_signals() -> asyncio.Event:
    """An event set by SIGINT or SIGTERM: how a service command runs until it is told to stop."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop
