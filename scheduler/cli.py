"""`infermesh scheduler`: the training scheduler, until SIGINT or SIGTERM.

With `--dask tcp://host:8786` it drives an existing Dask cluster whose workers were started with
`--resources GPU=n --name project/node --preload infermesh.scheduler.worker`. Without it, it starts
a local cluster with one worker per GPU node the fleet's agents report (the embedded default).
Several instances may run: one leads (etcd election), the others stand by and take over.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket

import click

from infermesh.agent.cli import endpoints
from infermesh.cli.common import CliState, pass_state, stop_on_signals
from infermesh.context import infermesh_home


@click.command()
@click.option("--etcd", help="etcd host:port[,...] (default: the context's).")
@click.option("--etcd-prefix", default="/infermesh", show_default=True)
@click.option("--dask", "dask_address", help="Dask scheduler address (default: a local cluster).")
@click.option(
    "--local-dask-port",
    type=click.IntRange(0, 65535),
    default=0,
    show_default=True,
    help="Port of the local cluster's Dask scheduler (0: any free port).",
)
@click.option("--identity", help="This instance's name in the election (default: host:pid).")
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    default=0,
    show_default=True,
    help="Serve Prometheus /metrics on this port (0: do not).",
)
@pass_state
def scheduler(
    state: CliState,
    etcd: str | None,
    etcd_prefix: str,
    dask_address: str | None,
    local_dask_port: int,
    identity: str | None,
    metrics_port: int,
) -> None:
    """Run the training scheduler: gang placement, elastic scaling, preemption, recovery."""
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("distributed").setLevel(logging.WARNING)
    identity = identity or f"{socket.gethostname()}:{os.getpid()}"
    # Ranks inherit it: checkpoint URIs may say file://$INFERMESH_HOME/checkpoints/...
    os.environ.setdefault("INFERMESH_HOME", str(infermesh_home()))

    async def run() -> None:
        # Imported here so that every other `mesh` command starts without loading Dask.
        from distributed import Client

        from infermesh.scheduler.local import LocalFleetCluster
        from infermesh.scheduler.metrics import serve_metrics
        from infermesh.scheduler.service import SchedulerService, SchedulerSettings
        from infermesh.store.etcd import EtcdStore
        from infermesh.store.keys import KeyLayout

        stop = stop_on_signals()
        async with EtcdStore(list(endpoints(etcd))) as store:
            local: LocalFleetCluster | None = None

            async def connect() -> Client:
                if dask_address:
                    return await Client(dask_address, asynchronous=True)
                assert local is not None and local.cluster is not None
                return await Client(local.cluster, asynchronous=True)

            settings = SchedulerSettings(identity=identity)
            service = SchedulerService(store, KeyLayout(etcd_prefix), settings, connect)
            follow = None
            try:
                if not dask_address:
                    await service.watch()
                    local = LocalFleetCluster(service.nodes, port=local_dask_port)
                    await local.start()
                    follow = asyncio.create_task(local.follow())
                if metrics_port:  # served once the cluster is up: `up` reads it as readiness
                    serve_metrics(metrics_port)
                await service.run(stop)
            finally:
                if follow is not None:
                    follow.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await follow
                if local is not None:
                    await local.close()

    asyncio.run(run())
