"""Object verbs: apply, get, describe, delete (kubectl's shape and flags)."""

from __future__ import annotations

from typing import Any

import click

from infermesh.cli.common import (
    CliState,
    confirm,
    files_option,
    kind_name,
    load_manifests,
    output_option,
    pass_state,
    print_apply,
    stale_warning,
    warn,
    yes_option,
)
from infermesh.cli.printers import (
    Column,
    aligned,
    column_widths,
    columns_for,
    print_describe,
    print_objects,
    print_table,
    print_watch_event,
    rows_for,
)
from infermesh.client import MeshClient
from infermesh.errors import BadRequest
from infermesh.model import kind_for

Obj = dict[str, Any]


@click.command()
@files_option
@click.option("--strict", is_flag=True, help="Fail on unresolved references instead of warning.")
@click.option("--dry-run", is_flag=True, help="Validate and report; change nothing.")
@pass_state
def apply(state: CliState, files: tuple[str, ...], strict: bool, dry_run: bool) -> None:
    """Create or update objects from YAML, all or nothing.

    Every document is validated before anything is sent; a second apply of the same files
    prints `unchanged`."""
    objects = load_manifests(files, state.context.project)
    print_apply(state.client.apply(objects, strict=strict, dry_run=dry_run))


@click.command()
@click.argument("kind")
@click.argument("name", required=False)
@output_option("table", "wide", "json", "yaml", default="table")
@click.option("-w", "--watch", is_flag=True, help="After listing, stream changes until Ctrl-C.")
@click.option("-A", "--all-projects", is_flag=True, help="List objects of every project.")
@click.option("-l", "--selector", help="Label selector, e.g. tier=gold.")
@pass_state
def get(
    state: CliState,
    kind: str,
    name: str | None,
    output: str,
    watch: bool,
    all_projects: bool,
    selector: str | None,
) -> None:
    """List objects of a kind, or show one.

    KIND is a kind, plural or alias (Endpoint, endpoints, ep); NAME picks one object."""
    client = state.client
    kind = kind_name(kind)
    if name and all_projects:
        raise BadRequest(
            "-A lists every project; to get one object by NAME, pick its project with -p"
        )
    project = "*" if all_projects else None
    if name:
        obj = client.get(kind, name)
        items, stale = [dict(obj)], obj.stale
        resource_version = obj["metadata"].get("resourceVersion")
    else:
        listed = client.list(kind, project=project, label_selector=selector)
        items, stale, resource_version = listed.items, listed.stale, listed.resource_version
    stale_warning(stale)
    cols = columns_for(kind, wide=output == "wide", all_projects=all_projects)
    if watch:
        _watch(client, kind, name, project, resource_version, items, cols, output)
    elif output in ("json", "yaml"):
        print_objects(items, output, single=bool(name))
    elif not items:
        cls = kind_for(kind)
        where = f" in project {state.context.project!r}"
        if cls.cluster_scoped or all_projects:
            where = "" if cls.cluster_scoped else " in any project"
        warn(f"No {cls.plural} found{where}.")
    else:
        print_table([c.header for c in cols], rows_for(items, cols))


def _watch(
    client: MeshClient,
    kind: str,
    name: str | None,
    project: str | None,
    resource_version: str | None,
    items: list[Obj],
    cols: list[Column],
    output: str,
) -> None:
    """kubectl get -w --output-watch-events: the listing as ADDED rows, then each change."""
    structured = output in ("json", "yaml")
    headers = ["EVENT", *(c.header for c in cols)]
    initial = [["ADDED", *row] for row in rows_for(items, cols)]
    widths = column_widths([headers, *initial])
    widths[0] = len("MODIFIED")  # room for every event type
    if structured:
        for obj in items:
            print_watch_event("ADDED", obj, output)
    else:
        for line in aligned([headers, *initial], widths):
            click.echo(line)
    try:
        for event in client.watch(kind, project=project, resource_version=resource_version):
            if event.type == "RESYNC":
                warn("Warning: watch history was compacted; listing again")
                continue
            if event.type == "BOOKMARK" or (name and event.object["metadata"]["name"] != name):
                continue
            if structured:
                print_watch_event(event.type, event.object, output)
            else:
                click.echo(aligned([[event.type, *rows_for([event.object], cols)[0]]], widths)[0])
    except KeyboardInterrupt:
        pass  # Ctrl-C is how a watch ends


@click.command()
@click.argument("kind")
@click.argument("name")
@pass_state
def describe(state: CliState, kind: str, name: str) -> None:
    """Show one object in detail, with its recent events."""
    kind = kind_name(kind)
    obj = state.client.get(kind, name)
    stale_warning(obj.stale)
    # Cluster-scoped objects (Project) belong to no project: look for their events in all.
    project = obj["metadata"].get("project") or "*"
    events = state.client.events(kind=kind, name=name, project=project, limit=20)
    print_describe(dict(obj), events)


@click.command()
@click.argument("kind")
@click.argument("name")
@yes_option
@pass_state
def delete(state: CliState, kind: str, name: str, yes: bool) -> None:
    """Delete one object (asks first unless --yes)."""
    kind = kind_name(kind)
    ref = f"{kind.lower()}/{name}"
    confirm(f"delete {ref} in project {state.context.project!r}", yes=yes)
    state.client.delete(kind, name)
    click.echo(f"{ref} deleted")


COMMANDS = [apply, get, describe, delete]
