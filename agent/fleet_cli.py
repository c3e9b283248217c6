"""`infermesh fleet`: run a simulated fleet (runtimes and their agents) until SIGINT or SIGTERM.

Like `infermesh agent`, it takes the API URL, token and project from the group's options and
the context file; `infermesh up` starts it with the token in INFERMESH_TOKEN.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import click

from infermesh.agent.cli import endpoints
from infermesh.agent.conditions import Deadband
from infermesh.agent.fleet import SimulatedFleet, load_fleet, serve_fleet
from infermesh.cli.common import CliState, pass_state, stop_on_signals
from infermesh.client import AsyncMeshClient
from infermesh.store.etcd import EtcdStore

DEFAULT_PORT = 9409


@click.command()
@click.option(
    "--fleet",
    "fleet_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Fleet file (default: the built-in 8-node fleet).",
)
@click.option(
    "--nodes",
    type=click.IntRange(1, 5000),
    help="Deal this many nodes over the fleet's groups instead of their own counts.",
)
@click.option("--etcd", help="etcd host:port[,...] (default: the context's).")
@click.option("--etcd-prefix", default="/infermesh", show_default=True)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=DEFAULT_PORT,
    show_default=True,
    help="Where the fleet serves /healthz (its nodes) and /metrics (all of them).",
)
@click.option(
    "--time-scale",
    type=click.FloatRange(min=0.001),
    default=1.0,
    show_default=True,
    help="Multiply every simulated duration (0.1 runs ten times faster).",
)
@click.option("--lease-ttl", type=click.IntRange(1, 300), default=5, show_default=True)
@click.option(
    "--max-report-interval",
    type=click.FloatRange(min=0.1),
    default=Deadband().max_interval_s,
    show_default=True,
    help="Each node's report is written at least this often, changed or not.",
)
@click.option(
    "--agent-http/--no-agent-http",
    default=False,
    show_default=True,
    help="Give every agent its own /metrics port as well.",
)
@pass_state
def fleet(
    state: CliState,
    fleet_file: Path | None,
    nodes: int | None,
    etcd: str | None,
    etcd_prefix: str,
    port: int,
    time_scale: float,
    lease_ttl: int,
    max_report_interval: float,
    agent_http: bool,
) -> None:
    """Run a simulated GPU fleet: vLLM-compatible runtimes with real agents, in one process."""
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ctx = state.context
    if not ctx.token:
        raise click.UsageError("the fleet applies its objects through the API: give --token")
    spec = load_fleet(fleet_file)

    async def run() -> None:
        stop = stop_on_signals()
        async with EtcdStore(list(endpoints(etcd))) as store:
            client = AsyncMeshClient(ctx.api_url, ctx.token, project=ctx.project)
            try:
                simulated = SimulatedFleet(
                    spec,
                    store,
                    client,
                    project=ctx.project,
                    etcd_prefix=etcd_prefix,
                    nodes=nodes,
                    time_scale=time_scale,
                    lease_ttl_s=lease_ttl,
                    deadband=Deadband(max_interval_s=max_report_interval),
                    agent_http=agent_http,
                )
                await serve_fleet(simulated, port, stop)
            finally:
                await client.aclose()

    asyncio.run(run())
