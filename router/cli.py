"""`infermesh router`: the data plane, until SIGINT or SIGTERM.

It reads etcd directly (a watch-fed view; it keeps routing from it when etcd is gone) and ships
its SLI series to the control-plane API with the token it is given (INFERMESH_TOKEN from `up`).
"""

from __future__ import annotations

import asyncio
import logging

import click

from infermesh.agent.cli import endpoints
from infermesh.agent.sim.wan import Location
from infermesh.cli.common import CliState, pass_state, stop_on_signals
from infermesh.router.server import serve_router
from infermesh.router.service import RouterSettings
from infermesh.store.etcd import EtcdStore
from infermesh.store.keys import KeyLayout

DEFAULT_PORT = 8090


@click.command()
@click.option("--etcd", help="etcd host:port[,...] (default: the context's).")
@click.option("--etcd-prefix", default="/infermesh", show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(0, 65535), default=DEFAULT_PORT, show_default=True)
@click.option("--name", default=None, help="This router's name in metrics (default: host:port).")
@click.option("--default-strategy", default="hybrid_mesh@1.0", show_default=True)
@click.option("--domain", help="The domain this router runs in (origin of unhinted requests).")
@click.option("--region", help="The region this router runs in.")
@click.option("--zone", help="The zone this router runs in.")
@click.option("--max-body-mb", type=click.FloatRange(min=0.001), default=4.0, show_default=True)
@click.option(
    "--event-loop",
    type=click.Choice(["uvloop", "asyncio"]),
    default="uvloop",
    show_default=True,
    help="uvloop's C transports take ~0.1 ms less per request than asyncio's (bench/router.py).",
)
@click.option(
    "--ship-series/--no-ship-series",
    default=True,
    show_default=True,
    help="Send SLI aggregates to the control plane's series store.",
)
@pass_state
def router(
    state: CliState,
    etcd: str | None,
    etcd_prefix: str,
    host: str,
    port: int,
    name: str | None,
    default_strategy: str,
    domain: str | None,
    region: str | None,
    zone: str | None,
    max_body_mb: float,
    event_loop: str,
    ship_series: bool,
) -> None:
    """Run the inference router: OpenAI-compatible routes and :invoke over the mesh's replicas."""
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ctx = state.context
    if ship_series and not ctx.token:
        raise click.UsageError("the router ships SLI series to the API: give --token")
    location = Location(domain, region, zone) if (domain or region or zone) else None
    settings = RouterSettings(
        name=name or f"{host}:{port}",
        default_strategy=default_strategy,
        max_body_bytes=int(max_body_mb * (1 << 20)),
        location=location,
    )

    async def run() -> None:
        stop = stop_on_signals()
        async with EtcdStore(list(endpoints(etcd))) as store:
            await serve_router(
                store,
                KeyLayout(etcd_prefix),
                settings,
                host,
                port,
                stop,
                api_url=ctx.api_url if ship_series else None,
                token=ctx.token,
            )

    if event_loop == "uvloop":
        import uvloop  # a dependency on Linux and macOS; imported only when chosen

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(run())
    else:
        asyncio.run(run())
