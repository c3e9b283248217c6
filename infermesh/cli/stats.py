"""`mesh stats`: traffic SLIs from the series store, and a summary of the mesh's objects."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import click

from infermesh.cli.common import CliState, pass_state, stale_warning, warn
from infermesh.cli.printers import NONE, node_status, print_table
from infermesh.client import MeshClient
from infermesh.model import KINDS
from infermesh.sli import parse_duration

MAX_POINTS = 1000  # per series: the step grows with the window so the answer stays small
SLI_HEADERS = [
    "REQUESTS",
    "RPS",
    "ERR%",
    "P50",
    "P95",
    "P99",
    "TTFT-P50",
    "TTFT-P95",
    "TTFT-P99",
    "HEDGES",
    "WON",
    "REJECTED",
]


def window_seconds(ctx: click.Context, param: click.Parameter, value: str) -> int:
    try:
        seconds = math.ceil(parse_duration(value.removeprefix("-")))
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    if seconds < 1:
        raise click.BadParameter("the window must be at least 1s")
    return seconds


def ms(value: float | None) -> str:
    if value is None:
        return NONE
    return f"{value:.0f}ms" if value < 1000 else f"{value / 1000:.2f}s"


def sli_row(total: dict[str, Any]) -> list[str]:
    """One series' totals as table cells, in the order of SLI_HEADERS."""
    rate = total.get("error_rate")
    return [
        str(total.get("requests", 0)),
        NONE if total.get("rps") is None else f"{total['rps']:.2f}",
        NONE if rate is None else f"{rate * 100:.1f}%",
        *(ms(total.get(f"latency_{p}_ms")) for p in ("p50", "p95", "p99")),
        *(ms(total.get(f"ttft_{p}_ms")) for p in ("p50", "p95", "p99")),
        str(total.get("hedges", 0)),
        str(total.get("hedge_wins", 0)),
        str(total.get("rejected", 0)),
    ]


def print_traffic(
    client: MeshClient, endpoint: str | None, by: str | None, window: int, project: str
) -> None:
    """One row per endpoint (and per `by` value) with its SLIs over the last `window` seconds."""
    dims = ["endpoint", *([by] if by else [])]
    step = max(10, math.ceil(window / MAX_POINTS / 10) * 10)
    query = {"since": f"-{window}s", "step": step, "by": ",".join(dims), "project": project}
    if endpoint:
        query["endpoint"] = endpoint
    series = client.series(**query)["series"]
    what = f"endpoint {endpoint}" if endpoint else f"project {project}"
    if not series:
        warn(f"No traffic for {what} in the last {_span(window)}.")
        return
    click.echo(f"Traffic of {what}, last {_span(window)}:")
    rows = [[s[d] or NONE for d in dims] + sli_row(s["total"]) for s in series]
    print_table([d.upper() for d in dims] + SLI_HEADERS, rows)


def _span(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def print_inventory(client: MeshClient, all_projects: bool, project: str, events: int) -> None:
    """Objects per kind, node states, and a summary of recent events."""
    scope = "*" if all_projects else None
    rows, stale = [], False
    node_states: Counter[str] = Counter()
    for kind, cls in KINDS.items():
        listed = client.list(cls.plural, project=scope)
        stale = stale or listed.stale
        rows.append([cls.plural, str(len(listed.items))])
        if kind == "Node":
            node_states.update(node_status(n) for n in listed.items)
    stale_warning(stale)
    print_table(["KIND", "COUNT"], rows)
    if node_states:
        click.echo("\nNodes: " + ", ".join(f"{n} {s}" for s, n in node_states.most_common()))
    recent = client.events(project=scope or project, limit=events)
    types = Counter(str(e.get("type")) for e in recent)
    click.echo(
        f"\nRecent events ({len(recent)}): "
        + (", ".join(f"{n} {t}" for t, n in types.most_common()) or NONE)
    )
    reasons = Counter(
        f"{e.get('reason')} {str(e.get('kind', '')).lower()}/{e.get('name')}"
        for e in recent
        if e.get("type") == "Warning"
    )
    for what, n in reasons.most_common(5):
        click.echo(f"  Warning x{n}: {what}")


@click.command()
@click.argument("endpoint", required=False)
@click.option(
    "--since",
    metavar="DURATION",
    default="5m",
    show_default=True,
    callback=window_seconds,
    help="How far back to look: 30s, 5m, 2h, 7d.",
)
@click.option(
    "--by",
    type=click.Choice(["revision", "domain", "tenant"]),
    help="One row per model revision, domain or tenant.",
)
@click.option("-A", "--all-projects", is_flag=True, help="Count objects of every project.")
@click.option(
    "--events",
    "event_count",
    type=click.IntRange(min=1),
    default=200,
    show_default=True,
    help="How many recent events to summarise.",
)
@pass_state
def stats(
    state: CliState,
    endpoint: str | None,
    since: int,
    by: str | None,
    all_projects: bool,
    event_count: int,
) -> None:
    """Traffic SLIs per endpoint (requests, rate, errors, latency and TTFT percentiles, hedges,
    rejections) and, without ENDPOINT, the objects, nodes and recent events of the mesh.

    With ENDPOINT, only that endpoint's traffic (one row per --by value)."""
    client, project = state.client, state.context.project
    if endpoint:
        client.get("endpoints", endpoint)  # a typo is an error, not "no traffic"
    print_traffic(client, endpoint, by, since, project)
    if not endpoint:
        click.echo()
        print_inventory(client, all_projects, project, event_count)


COMMANDS = [stats]
