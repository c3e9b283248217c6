"""Looking at the mesh and who you are to it: events, audit, tokens, whoami, version."""

from __future__ import annotations

import json
import secrets
from typing import Any

import click

import infermesh
from infermesh.cli.common import (
    CliState,
    fail,
    kind_name,
    output_option,
    pass_state,
    warn,
)
from infermesh.cli.printers import (
    EVENT_HEADERS,
    NONE,
    aligned,
    column_widths,
    console,
    event_row,
    print_table,
    text,
)
from infermesh.errors import MeshError

# --- events ---------------------------------------------------------------------------------


@click.group()
def events() -> None:
    """Events: who did what to which object, and why."""


@events.command()
@click.option("-f", "--follow", is_flag=True, help="Keep printing new events until Ctrl-C.")
@click.option("--kind", help="Only events of this kind (or alias).")
@click.option("--name", help="Only events of objects with this name.")
@click.option("--warnings", is_flag=True, help="Only Warning events.")
@click.option(
    "-n",
    "--lines",
    type=click.IntRange(min=0),
    default=20,
    show_default=True,
    help="How many recent events to show first.",
)
@click.option("-A", "--all-projects", is_flag=True, help="Events of every project.")
@output_option("table", "json", default="table")
@pass_state
def tail(
    state: CliState,
    follow: bool,
    kind: str | None,
    name: str | None,
    warnings: bool,
    lines: int,
    all_projects: bool,
    output: str,
) -> None:
    """Recent events, oldest first; with -f, then new ones as they happen."""
    filters: dict[str, Any] = {
        "kind": kind_name(kind) if kind else None,
        "name": name,
        "type": "Warning" if warnings else None,
        "project": "*" if all_projects else state.context.project,
    }
    client = state.client
    recent = client.events(**filters, limit=max(lines, 1))  # newest first
    shown = list(reversed(recent[:lines]))
    rows = [event_row(e) for e in shown]
    widths = column_widths([EVENT_HEADERS, *rows])

    def emit(event: dict[str, Any], row: list[str]) -> None:
        if output == "json":
            click.echo(json.dumps(event, separators=(",", ":")))
        else:
            _echo_event(aligned([row], widths)[0], event.get("type") == "Warning")

    if output == "table":
        if rows or follow:
            click.echo(aligned([EVENT_HEADERS], widths)[0])
        else:
            warn("No events found.")
    for event, row in zip(shown, rows, strict=True):
        emit(event, row)
    if not follow:
        return
    try:
        for event in client.events_stream(last_event_id=recent.resource_version or None, **filters):
            emit(event, event_row(event))
    except KeyboardInterrupt:
        pass  # Ctrl-C is how -f ends


def _echo_event(line: str, warning: bool) -> None:
    out = console()
    if out.is_terminal:
        out.print(line, style="yellow" if warning else None, markup=False, soft_wrap=True)
    else:
        click.echo(line)


# --- audit ----------------------------------------------------------------------------------


@click.group()
def audit() -> None:
    """The hash-chained audit log of every change."""


@audit.command()
@pass_state
def verify(state: CliState) -> None:
    """Check the whole chain; exit 1 at the first broken record."""
    result = state.client.audit_verify()
    if result.get("ok"):
        click.echo(
            f"OK: {result.get('records', 0)} records, chain intact, head {result.get('headHash')}"
        )
        return
    fail(
        f"audit chain broken at record {result.get('brokenSeq')}: {result.get('problem')} "
        f"({result.get('records', 0)} records, last good hash {result.get('headHash')})"
    )


@audit.command()
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=50,
    show_default=True,
    help="How many of the latest records.",
)
@output_option("table", "json", default="table")
@pass_state
def log(state: CliState, limit: int, output: str) -> None:
    """The latest audit records, oldest first."""
    records = list(reversed(state.client.audit(limit=limit)))
    if output == "json":
        click.echo(json.dumps(records, indent=2))
        return
    if not records:
        warn("The audit log is empty.")
        return
    rows = [
        [
            text(r.get("seq")),
            text(r.get("time")),
            text(r.get("actor")),
            text(r.get("action")),
            f"{str(r.get('kind', '')).lower()}/{r.get('name', '')}",
            text(r.get("project")),
            _changes(r.get("diff") or []),
            str(r.get("hash", ""))[:12] or NONE,
        ]
        for r in records
    ]
    print_table(["SEQ", "TIME", "ACTOR", "ACTION", "OBJECT", "PROJECT", "CHANGED", "HASH"], rows)


def _changes(diff: list[dict[str, Any]]) -> str:
    """The changed field paths, shortened to a few."""
    paths = [str(d.get("path")) for d in diff]
    if not paths:
        return NONE
    return ",".join(paths[:3]) + (f",+{len(paths) - 3}" if len(paths) > 3 else "")


# --- identity -------------------------------------------------------------------------------


@click.group()
def token() -> None:
    """API tokens."""


@token.command("create")
@click.option(
    "--role",
    "roles",
    multiple=True,
    required=True,
    help="orgAdmin, platformAdmin, modelOwner, jobOwner or viewer; repeatable.",
)
@click.option(
    "--project",
    "projects",
    multiple=True,
    help="Project the token may touch ('*' for all); repeatable.",
)
@click.option(
    "--tenant",
    "tenants",
    multiple=True,
    help="Tenant whose projects the token may touch; repeatable.",
)
@click.option("--subject", help="Who holds the token (default: generated from the role).")
@pass_state
def token_create(
    state: CliState,
    roles: tuple[str, ...],
    projects: tuple[str, ...],
    tenants: tuple[str, ...],
    subject: str | None,
) -> None:
    """Mint a token. It is printed once, alone on stdout, and never stored."""
    if not projects and not tenants:
        raise click.UsageError("give --project (or --tenant) at least once")
    subject = subject or f"{roles[0].lower()}-{secrets.token_hex(3)}"
    minted = state.client.create_token(subject, list(roles), list(projects), list(tenants))
    click.echo(minted["token"])
    scope = ", ".join([*(f"project {p}" for p in projects), *(f"tenant {t}" for t in tenants)])
    warn(
        f"Token for {minted.get('subject', subject)} (roles {', '.join(roles)}; {scope}). "
        "It is shown only this once: store it now."
    )


@click.command()
@output_option("text", "json", default="text")
@pass_state
def whoami(state: CliState, output: str) -> None:
    """Who the API takes you for, and where."""
    me = state.client.whoami()
    ctx = state.context
    if output == "json":
        click.echo(json.dumps({**me, "api": ctx.api_url, "project": ctx.project}, indent=2))
        return
    for key in ("subject", "roles", "projects", "tenants"):
        click.echo(f"{key + ':':<10}{text(me.get(key))}")
    click.echo(f"{'api:':<10}{ctx.api_url}")
    click.echo(f"{'project:':<10}{ctx.project}")


@click.command()
@pass_state
def version(state: CliState) -> None:
    """Versions of this client and of the API it points at."""
    click.echo(f"Client Version: {infermesh.__version__}")
    try:
        server = state.client.server_version()
    except MeshError as exc:
        server = f"unknown ({exc.message.split(';')[0]})"
    click.echo(f"Server Version: {server} ({state.context.api_url})")


COMMANDS = [events, audit, token, whoami, version]
