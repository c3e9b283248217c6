"""`infermesh agent`: run one node agent in this process until SIGINT or SIGTERM.

The API URL, token and project come from the `infermesh` group's options and the context file
(`infermesh --api URL --token T -p PROJECT agent --node n1 ...`), as for every other command.
The group's state is read from the click context rather than imported, because the group
imports this module.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import TYPE_CHECKING, get_args

import click

from infermesh.agent.agent import AgentConfig, FactOverrides, run_agent
from infermesh.agent.conditions import Deadband
from infermesh.agent.report import RuntimeKind
from infermesh.context import context_path, load_context, read_context_file
from infermesh.model import EnvironmentKind, LinkClass

if TYPE_CHECKING:
    from infermesh.cli.common import CliState

DEFAULT_ETCD = "127.0.0.1:2379"
DEFAULT_PORT = 9410  # beside node_exporter (9100) and dcgm-exporter (9400)


def endpoints(value: str | None) -> tuple[str, ...]:
    if value:
        return tuple(e.strip() for e in value.split(",") if e.strip())
    ctx = read_context_file(context_path())
    return tuple((ctx.etcd_endpoints if ctx else None) or [DEFAULT_ETCD])


@click.command()
@click.option("--node", default=lambda: socket.gethostname().lower(), show_default="hostname")
@click.option("--node-class", help="NodeClass whose facts the node reports (default: its Node's).")
@click.option("--etcd", help=f"etcd host:port[,...] (default: the context's, else {DEFAULT_ETCD}).")
@click.option("--etcd-prefix", default="/infermesh", show_default=True)
@click.option("--runtime-url", help="The runtime to watch, e.g. http://127.0.0.1:8000.")
@click.option(
    "--runtime-kind", type=click.Choice(get_args(RuntimeKind)), default="vllm", show_default=True
)
@click.option(
    "--gpu-source",
    type=click.Choice(["auto", "nvml", "simulated"]),
    default="auto",
    show_default=True,
    help="auto: NVML when a driver answers, else simulated GPUs.",
)
@click.option("--gpu", help="GPU type, e.g. H100-80G (overrides the NodeClass).")
@click.option("--gpu-count", type=click.IntRange(min=0))
@click.option("--vram-gb", type=click.FloatRange(min=0), help="VRAM per GPU.")
@click.option("--mig/--no-mig", default=None)
@click.option("--nvlink/--no-nvlink", default=None)
@click.option("--environment", type=click.Choice(get_args(EnvironmentKind)))
@click.option("--provider")
@click.option("--region")
@click.option("--zone")
@click.option("--domain")
@click.option("--link-class", "link_classes", multiple=True, type=click.Choice(get_args(LinkClass)))
@click.option("--spot/--no-spot", default=None)
@click.option("--residency")
@click.option("--price-per-gpu-hour", type=click.FloatRange(min=0))
@click.option("--lease-ttl", type=click.IntRange(min=2), default=5, show_default=True)
@click.option("--scrape-interval", type=click.FloatRange(min=0.05), default=1.0, show_default=True)
@click.option(
    "--max-report-interval",
    type=click.FloatRange(min=0.1),
    default=Deadband().max_interval_s,
    show_default=True,
    help="Write the report at least this often, changed or not.",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address of /metrics.")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=DEFAULT_PORT,
    show_default=True,
    help="Port of /metrics and /healthz (0: any free one).",
)
@click.option("--no-http", is_flag=True, help="Serve no /metrics or /healthz.")
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
)
@click.pass_context
def agent(
    click_ctx: click.Context,
    node: str,
    node_class: str | None,
    etcd: str | None,
    etcd_prefix: str,
    runtime_url: str | None,
    runtime_kind: RuntimeKind,
    gpu_source: str,
    gpu: str | None,
    gpu_count: int | None,
    vram_gb: float | None,
    mig: bool | None,
    nvlink: bool | None,
    environment: EnvironmentKind | None,
    provider: str | None,
    region: str | None,
    zone: str | None,
    domain: str | None,
    link_classes: tuple[str, ...],
    spot: bool | None,
    residency: str | None,
    price_per_gpu_hour: float | None,
    lease_ttl: int,
    scrape_interval: float,
    max_report_interval: float,
    host: str,
    port: int,
    no_http: bool,
    log_level: str,
) -> None:
    """Run the node agent (meshd): register this node, report its GPUs and runtime, and
    obey cordon, drain and quarantine. Ctrl-C or SIGTERM removes the node at once."""
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    state: CliState | None = click_ctx.obj
    ctx = state.context if state is not None else load_context()
    try:
        config = AgentConfig(
            node=node,
            project=ctx.project,
            etcd_endpoints=endpoints(etcd),
            etcd_prefix=etcd_prefix,
            api_url=ctx.api_url,
            api_token=ctx.token,
            node_class=node_class,
            facts=FactOverrides(
                gpu=gpu,
                gpu_count=gpu_count,
                vram_gb=vram_gb,
                mig=mig,
                nvlink=nvlink,
                environment=environment,
                provider=provider,
                region=region,
                zone=zone,
                domain=domain,
                link_classes=link_classes or None,
                spot=spot,
                residency=residency,
                price_per_gpu_hour=price_per_gpu_hour,
            ),
            runtime_url=runtime_url,
            runtime_kind=runtime_kind,
            gpu_source=gpu_source,  # type: ignore[arg-type]  # click.Choice checked it
            lease_ttl_s=lease_ttl,
            scrape_interval_s=scrape_interval,
            deadband=Deadband(max_interval_s=max_report_interval),
            http_host=host,
            http_port=None if no_http else port,
        )
    except ValueError as exc:  # a bad node or project name
        raise click.UsageError(str(exc)) from None
    asyncio.run(_run_until_signalled(config))


async def _run_until_signalled(config: AgentConfig) -> None:
    from infermesh.cli.common import stop_on_signals  # the CLI package imports this module

    stop = stop_on_signals()
    await run_agent(config, stop)
