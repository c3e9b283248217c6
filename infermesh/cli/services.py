"""Commands that run parts of the mesh: `up` (all of it) and `api` (the control plane)."""

from __future__ import annotations

import os
from pathlib import Path

import click

from infermesh.cli.common import CliState, pass_state
from infermesh.context import context_path, infermesh_home, read_context_file
from infermesh.up import run

DEFAULT_ETCD = "127.0.0.1:2379"


def split_endpoints(value: str) -> list[str]:
    return [e.strip() for e in value.split(",") if e.strip()]


@click.command()
@click.option("--etcd", help="Use this etcd (host:port[,...]) instead of starting one.")
@click.option(
    "--api-port",
    type=click.IntRange(1, 65535),
    help="API port (default: 8080 if free, else any free port).",
)
@click.option(
    "--home",
    type=click.Path(file_okay=False, path_type=Path),
    help="State directory (default: $INFERMESH_HOME or ~/.infermesh).",
)
@click.option(
    "--nodes",
    type=click.IntRange(0, 5000),
    help="Simulated fleet size (default: the built-in fleet's 8 nodes; 0: no fleet).",
)
@click.option(
    "--fleet",
    "fleet_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Fleet file: its nodes, and the Domains and NodeClasses they need (default: built-in).",
)
@click.option("--no-dashboard", is_flag=True, help="Do not start the Streamlit dashboard.")
@pass_state
def up(
    state: CliState,
    etcd: str | None,
    api_port: int | None,
    home: Path | None,
    nodes: int | None,
    fleet_file: Path | None,
    no_dashboard: bool,
) -> None:
    """Run a whole local mesh until Ctrl-C.

    Starts etcd (unless --etcd), the API and a simulated GPU fleet, then writes the context
    file every client reads."""
    code = run(
        home=(home or infermesh_home()).expanduser().resolve(),
        etcd=split_endpoints(etcd) if etcd else None,
        api_port=api_port,
        project=state.project,
        nodes=nodes,
        fleet_file=fleet_file.resolve() if fleet_file else None,
        dashboard=not no_dashboard,
    )
    raise SystemExit(code)


@click.command()
@click.option(
    "--etcd", help=f"etcd endpoints host:port[,...] (default: the context's, else {DEFAULT_ETCD})."
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(1, 65535), default=8080, show_default=True)
@click.option(
    "--etcd-prefix",
    default="/infermesh",
    show_default=True,
    help="Root of every key; lets several meshes share one etcd.",
)
@click.option(
    "--max-body-bytes",
    type=click.IntRange(min=1),
    default=1 << 20,
    show_default=True,
    help="Larger request bodies get 413.",
)
@click.option(
    "--series-db",
    type=click.Path(dir_okay=False, path_type=Path),
    help="SQLite file of the routers' SLI series (default: $INFERMESH_HOME/series.sqlite).",
)
@click.option(
    "--series-retention",
    type=click.IntRange(min=60),
    default=31 * 86400,
    show_default=True,
    metavar="SECONDS",
    help="Series older than this are deleted (keep the longest SLO window and a margin).",
)
@click.option(
    "--series-raw-retention",
    type=click.IntRange(min=60),
    default=86400,
    show_default=True,
    metavar="SECONDS",
    help="Raw 10 s buckets are kept this long; older time is kept downsampled (1 min, 5 min, 1 h).",
)
@click.option(
    "--series-max-mb",
    type=click.IntRange(min=1),
    default=512,
    show_default=True,
    metavar="MIB",
    help="Cap on the series file: over it, the oldest detail is dropped, then the oldest data.",
)
@click.option(
    "--series-settle",
    type=click.IntRange(min=10),
    default=120,
    show_default=True,
    metavar="SECONDS",
    help="A bucket is final this long after its end: rolled up (a re-send then adds its change).",
)
@click.option(
    "--slo-interval",
    type=click.FloatRange(min=0),
    default=10.0,
    show_default=True,
    metavar="SECONDS",
    help="How often the SLO evaluator judges every SLO (0: not in this API process).",
)
@click.option(
    "--prometheus-url",
    metavar="URL",
    help="Judge SLOs and canaries from this Prometheus (it scrapes the routers' /metrics) "
    "instead of the series store.",
)
@click.option(
    "--prometheus-project",
    default="default",
    show_default=True,
    help="The project the routers' Prometheus metrics belong to (they carry no project label).",
)
def api(
    etcd: str | None,
    host: str,
    port: int,
    etcd_prefix: str,
    max_body_bytes: int,
    series_db: Path | None,
    series_retention: int,
    series_raw_retention: int,
    series_max_mb: int,
    series_settle: int,
    slo_interval: float,
    prometheus_url: str | None,
    prometheus_project: str,
) -> None:
    """Run the control-plane API alone.

    An admin token can be bootstrapped through INFERMESH_BOOTSTRAP_TOKEN (an environment
    variable, so it never shows in the process list)."""
    from infermesh.store.api.server import serve  # fastapi and uvicorn: only when serving

    if etcd:
        endpoints = split_endpoints(etcd)
    else:
        ctx = read_context_file(context_path())
        endpoints = (ctx.etcd_endpoints if ctx else None) or [DEFAULT_ETCD]
    serve(
        etcd_endpoints=endpoints,
        host=host,
        port=port,
        prefix=etcd_prefix,
        bootstrap_token=os.environ.get("INFERMESH_BOOTSTRAP_TOKEN") or None,
        max_body_bytes=max_body_bytes,
        series_db=series_db,
        series_retention_s=series_retention,
        series_raw_retention_s=series_raw_retention,
        series_max_bytes=series_max_mb << 20,
        series_settle_s=series_settle,
        slo_interval_s=slo_interval,
        prometheus_url=prometheus_url,
        prometheus_project=prometheus_project,
    )


@click.command()
@click.option(
    "--api", "api_url", metavar="URL", help="Control-plane API URL (default: the context's)."
)
@click.option("--token", help="API token (default: the context's; env INFERMESH_TOKEN).")
@click.option(
    "--address",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on (0.0.0.0 shows the dashboard to the network).",
)
@click.option("--port", type=click.IntRange(1, 65535), default=8501, show_default=True)
@pass_state
def dashboard(
    state: CliState, api_url: str | None, token: str | None, address: str, port: int
) -> None:
    """Run the Streamlit SLO dashboard (headless, no usage statistics).

    It talks to the control-plane API only, with the context's token (or --token), which
    reaches it through the environment, never the command line."""
    from infermesh.context import load_context
    from infermesh.dashboard import launch  # streamlit: only when serving

    ctx = load_context(api=api_url or state.api, token=token or state.token, project=state.project)
    argv = launch.streamlit_argv(address, port)
    click.echo(f"InferMesh dashboard on {launch.url(address, port)} (API {ctx.api_url})", err=True)
    os.execve(argv[0], argv, launch.streamlit_env(ctx))


COMMANDS = [up, api, dashboard]
