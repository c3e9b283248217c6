"""`infermesh-console`'s command line and the context it connects with.

The context file (`$INFERMESH_HOME/context.json`, or `--context FILE`) gives the API, the token
and the project; flags beat `INFERMESH_API` / `INFERMESH_TOKEN` / `INFERMESH_PROJECT`, which
beat the file (infermesh/context.py). A context whose JSON says `"readonly": true` opens the
console read-only, as `--readonly` does; `"production": true` (or a name like `prod-eu`) turns
it red.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from infermesh.console.theme import is_production
from infermesh.context import Context, load_context, read_context_file
from infermesh.errors import BadRequest


@dataclass(frozen=True)
class Settings:
    api_url: str
    token: str | None
    project: str
    context: str  # the context's name, shown in the header
    readonly: bool = False
    production: bool = False
    demo: bool = False


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="infermesh-console",
        description="A terminal console for InferMesh: nodes, endpoints, jobs, SLOs and events, "
        "live, with the actions SREs take on them.",
    )
    p.add_argument(
        "--api", help="control-plane API URL (default: the context's, or $INFERMESH_API)"
    )
    p.add_argument("--token", help="bearer token (default: the context's, or $INFERMESH_TOKEN)")
    p.add_argument("-p", "--project", help="project (default: the context's); '*' for all")
    p.add_argument(
        "--context",
        metavar="FILE",
        help="a context JSON file other than $INFERMESH_HOME/context.json",
    )
    p.add_argument(
        "--readonly",
        action="store_true",
        help="no actions: every key that changes the mesh is switched off",
    )
    p.add_argument(
        "--demo", action="store_true", help="fixed demo data instead of an API (to try the keys)"
    )
    return p


def _context(args: argparse.Namespace, env: Mapping[str, str]) -> Context:
    if not args.context:
        return load_context(api=args.api, token=args.token, project=args.project)
    path = Path(args.context).expanduser()
    ctx = read_context_file(path)
    if ctx is None:
        raise BadRequest(f"{path}: no such context file")
    ctx.api_url = (args.api or env.get("INFERMESH_API") or ctx.api_url).rstrip("/")
    ctx.token = args.token or env.get("INFERMESH_TOKEN") or ctx.token
    ctx.project = args.project or env.get("INFERMESH_PROJECT") or ctx.project
    if ctx.name == "local":  # unnamed: the file's name says which it is (prod.json)
        ctx.name = path.stem
    return ctx


def settings(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> Settings:
    args = parser().parse_args(argv)
    env = os.environ if env is None else env
    ctx = _context(args, env)
    readonly = args.readonly or bool(ctx.readonly) or ctx.extra.get("readonly") is True
    return Settings(
        api_url=ctx.api_url,
        token=ctx.token,
        project=ctx.project,
        context=ctx.name,
        readonly=readonly,
        production=is_production(ctx.name, ctx.extra),
        demo=args.demo,
    )
