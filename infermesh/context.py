"""The context file: where the mesh is and who we are to it.

`infermesh up` writes `$INFERMESH_HOME/context.json`; every client reads it. Explicit arguments
beat the environment (`INFERMESH_API`, `INFERMESH_ROUTER`, `INFERMESH_TOKEN`,
`INFERMESH_PROJECT`), which beats the file, which beats the defaults.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from infermesh.errors import BadRequest

DEFAULT_API_URL = "http://127.0.0.1:8080"
CONTEXT_FILE = "context.json"


@dataclass
class Context:
    """One mesh as a client sees it. Keys of the file this class does not know are kept in
    `extra` and written back, so older clients never drop what newer ones added."""

    api_url: str = DEFAULT_API_URL
    router_url: str | None = None
    token: str | None = None
    etcd_endpoints: list[str] = field(default_factory=list)
    dask_scheduler: str | None = None
    project: str = "default"
    readonly: bool = False
    name: str = "local"
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Context:
        known = {f.name for f in fields(cls)} - {"extra"}
        return cls(
            **{k: v for k, v in data.items() if k in known},
            extra={k: v for k, v in data.items() if k not in known},
        )

    def to_json(self) -> dict[str, Any]:
        data = dict(self.extra)
        data.update({f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"})
        return data


def infermesh_home() -> Path:
    """`$INFERMESH_HOME`, else `~/.infermesh`."""
    env = os.environ.get("INFERMESH_HOME")
    return Path(env).expanduser() if env else Path.home() / ".infermesh"


def context_path(home: Path | None = None) -> Path:
    return (home or infermesh_home()) / CONTEXT_FILE


def read_context_file(path: Path) -> Context | None:
    """The context stored at `path`, or None when there is none."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadRequest(f"{path}:{exc.lineno}: context file is not valid JSON: {exc.msg}") from exc
    if not isinstance(data, dict):
        raise BadRequest(f"{path}: context file must hold a JSON object")
    try:
        return Context.from_json(data)
    except TypeError as exc:  # a known key with a value of the wrong shape
        raise BadRequest(f"{path}: bad context file: {exc}") from exc


def load_context(
    *,
    api: str | None = None,
    token: str | None = None,
    project: str | None = None,
    router: str | None = None,
    home: Path | None = None,
) -> Context:
    """The context to use: explicit arguments > environment > context file > defaults."""
    ctx = read_context_file(context_path(home)) or Context()
    env = os.environ
    ctx.api_url = (api or env.get("INFERMESH_API") or ctx.api_url).rstrip("/")
    router_url = router or env.get("INFERMESH_ROUTER") or ctx.router_url
    ctx.router_url = router_url.rstrip("/") if router_url else None
    ctx.token = token or env.get("INFERMESH_TOKEN") or ctx.token
    ctx.project = project or env.get("INFERMESH_PROJECT") or ctx.project
    return ctx


def write_context(ctx: Context, *, home: Path | None = None) -> Path:
    """Write the context file atomically with mode 0600 (it holds a token); returns its path."""
    path = context_path(home)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    # mkstemp creates the file 0600, so the token is never readable by others, not even briefly.
    fd, tmp = tempfile.mkstemp(prefix=".context-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(ctx.to_json(), f, indent=2, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
