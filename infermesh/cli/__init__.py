"""The mesh / infermesh command line.

`main` is the group; each module adds a family of commands (objects, actions, observe,
services). A later service is one `main.add_command(...)` away.
"""

from __future__ import annotations

import click

from infermesh.agent.cli import agent
from infermesh.agent.fleet_cli import fleet
from infermesh.agent.sim.cli import sim_runtime
from infermesh.cli import actions, invoke, objects, observe, services, stats
from infermesh.cli.common import CliState, MeshGroup
from infermesh.router.cli import router
from infermesh.scheduler.cli import scheduler


@click.group(cls=MeshGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--api", metavar="URL", help="Control-plane API URL (env INFERMESH_API).")
@click.option("--token", help="API token (env INFERMESH_TOKEN).")
@click.option("-p", "--project", help="Project to work in (env INFERMESH_PROJECT).")
@click.version_option(package_name="infermesh", prog_name="infermesh")
@click.pass_context
def main(ctx: click.Context, api: str | None, token: str | None, project: str | None) -> None:
    """InferMesh: declare inference and training objects and keep an eye on the mesh.

    Settings come from $INFERMESH_HOME/context.json (written by `infermesh up`); the options
    above and the INFERMESH_* environment variables override it."""
    ctx.obj = CliState(api=api, token=token, project=project)


for command in (
    *objects.COMMANDS,
    *actions.COMMANDS,
    *observe.COMMANDS,
    *stats.COMMANDS,
    *invoke.COMMANDS,
    *services.COMMANDS,
    agent,
    fleet,
    router,
    scheduler,
    sim_runtime,
):
    main.add_command(command)
