"""What the control plane answers, as the SDK hands it over: result types and the decoders that
turn an HTTP response into them (or into the server's `MeshError`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx

from infermesh.errors import MeshError
from infermesh.model import kind_for

STALE_HEADER = "X-InferMesh-Stale"


class MeshObject(dict[str, Any]):
    """An object as the server sent it; `stale` is true when it came from the API's cache
    while etcd was unreachable."""

    stale: bool = False


class ItemList(list[dict[str, Any]]):
    """Records (events, audit) as listed; `resource_version` is where a stream should resume
    to miss nothing after them."""

    resource_version: str = ""


@dataclass
class ObjectList:
    items: list[dict[str, Any]]
    resource_version: str
    stale: bool = False


@dataclass
class ApplyResult:
    kind: str
    name: str
    project: str
    action: str  # created | configured | unchanged
    warnings: list[str] = field(default_factory=list)


@dataclass
class WatchEvent:
    type: str  # ADDED | MODIFIED | DELETED | RESYNC | BOOKMARK
    object: dict[str, Any]
    resource_version: str


def plural_of(word: str) -> str:
    """The URL plural of a kind, plural or alias ("ep", "Endpoint" -> "endpoints")."""
    return kind_for(word).plural


def body_of(resp: httpx.Response) -> Any:
    """The JSON body of a 2xx answer, or the server's error raised as its MeshError."""
    try:
        body = resp.json() if resp.content else None
    except ValueError:
        body = resp.text
    if resp.is_success:
        return body
    raise MeshError.from_json(resp.status_code, body)


def is_stale(resp: httpx.Response) -> bool:
    return resp.headers.get(STALE_HEADER, "").lower() == "true"


def read_object(resp: httpx.Response) -> MeshObject:
    obj = MeshObject(body_of(resp) or {})
    obj.stale = is_stale(resp)
    return obj


def read_object_list(resp: httpx.Response) -> ObjectList:
    body = body_of(resp)
    meta = body.get("metadata") or {}
    return ObjectList(
        items=list(body.get("items") or []),
        resource_version=str(meta.get("resourceVersion", "")),
        stale=bool(meta.get("stale")) or is_stale(resp),
    )


def read_items(resp: httpx.Response) -> ItemList:
    body = body_of(resp)
    if not isinstance(body, dict):
        return ItemList(body or [])
    items = ItemList(body.get("items") or [])
    items.resource_version = str((body.get("metadata") or {}).get("resourceVersion", ""))
    return items


def read_apply_results(resp: httpx.Response) -> list[ApplyResult]:
    return [
        ApplyResult(
            kind=r["kind"],
            name=r["name"],
            project=r.get("project", "default"),
            action=r["action"],
            warnings=list(r.get("warnings") or []),
        )
        for r in body_of(resp)["results"]
    ]


def read_json(resp: httpx.Response) -> dict[str, Any]:
    return body_of(resp) or {}


def read_server_version(resp: httpx.Response) -> str:
    return str((body_of(resp).get("info") or {}).get("version", "unknown"))


def read_nothing(resp: httpx.Response) -> None:
    body_of(resp)
