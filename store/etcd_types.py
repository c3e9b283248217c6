"""The values the etcd adapter speaks in: stored keys, watch events, transaction compares and
operations, and their conversion from etcd's protobuf messages."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from etcd3aio import _protobuf as rpc

from infermesh.errors import Conflict, NotFound

EventType = Literal["PUT", "DELETE", "RESYNC", "PROGRESS"]
CompareOp = Literal["==", "!=", "<", ">"]


class RevisionCompacted(Conflict):
    """The revision asked for is older than etcd's compacted history: list again at the latest."""


class LeaseNotFound(NotFound):
    """The lease expired or was revoked (a put bound to it is refused)."""


@dataclass(frozen=True, slots=True)
class KeyValue:
    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """One change under a watched prefix.

    `PUT`/`DELETE` carry the key and its `mod_revision` (a DELETE's value is empty).
    `RESYNC` means the history to resume from was compacted: `mod_revision` is the compact
    revision, and it is the last event of its iterator; list again and watch from there.
    `PROGRESS` (only with `progress_notify=True`) says every change up to `mod_revision` has been
    delivered.
    """

    type: EventType
    key: str
    value: bytes
    mod_revision: int
    create_revision: int = 0
    prev_value: bytes | None = None


@dataclass(frozen=True, slots=True)
class TxnResult:
    """`responses` follow the ops of the branch that ran: `Op.get` gives `list[KeyValue]`,
    `Op.delete` the number of keys deleted, `Op.put` None."""

    succeeded: bool
    revision: int
    responses: list[list[KeyValue] | int | None]


_COMPARE_RESULTS = {
    "==": rpc.Compare.EQUAL,
    "!=": rpc.Compare.NOT_EQUAL,
    "<": rpc.Compare.LESS,
    ">": rpc.Compare.GREATER,
}


def _compare(key: str, op: CompareOp, target: int, **expected: int | bytes) -> rpc.Compare:
    try:
        result = _COMPARE_RESULTS[op]
    except KeyError:
        raise ValueError(f"compare operator must be one of ==, !=, <, >; got {op!r}") from None
    return rpc.Compare(result=result, target=target, key=key.encode(), **expected)


class Compare:
    """One condition of a transaction. A missing key has revisions and version 0, so
    `Compare.mod_revision(key, "==", 0)` means "does not exist"."""

    __slots__ = ("pb",)

    def __init__(self, pb: rpc.Compare) -> None:
        self.pb = pb

    @classmethod
    def mod_revision(cls, key: str, op: CompareOp, value: int) -> Compare:
        return cls(_compare(key, op, rpc.Compare.MOD, mod_revision=value))

    @classmethod
    def create_revision(cls, key: str, op: CompareOp, value: int) -> Compare:
        return cls(_compare(key, op, rpc.Compare.CREATE, create_revision=value))

    @classmethod
    def version(cls, key: str, op: CompareOp, value: int) -> Compare:
        return cls(_compare(key, op, rpc.Compare.VERSION, version=value))

    @classmethod
    def value(cls, key: str, op: CompareOp, value: bytes | str) -> Compare:
        """Note: etcd fails a value compare on a missing key whatever the operator."""
        return cls(_compare(key, op, rpc.Compare.VALUE, value=as_bytes(value)))


class Op:
    """One operation of a transaction branch."""

    __slots__ = ("pb",)

    def __init__(self, pb: rpc.RequestOp) -> None:
        self.pb = pb

    @classmethod
    def put(cls, key: str, value: bytes | str, lease: int = 0) -> Op:
        return cls(
            rpc.RequestOp(
                request_put=rpc.PutRequest(key=key.encode(), value=as_bytes(value), lease=lease)
            )
        )

    @classmethod
    def delete(cls, key: str) -> Op:
        return cls(rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=key.encode())))

    @classmethod
    def get(cls, key: str) -> Op:
        return cls(rpc.RequestOp(request_range=rpc.RangeRequest(key=key.encode())))


def as_bytes(value: bytes | str) -> bytes:
    return value.encode() if isinstance(value, str) else value


def kv_from_pb(kv: Any) -> KeyValue:  # an mvccpb.KeyValue
    return KeyValue(
        kv.key.decode(), kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease
    )


def event_from_pb(ev: Any) -> WatchEvent:  # an mvccpb.Event
    kv = ev.kv
    return WatchEvent(
        "DELETE" if ev.type else "PUT",
        kv.key.decode(),
        kv.value,
        kv.mod_revision,
        kv.create_revision,
        ev.prev_kv.value if ev.HasField("prev_kv") else None,
    )


def op_response_from_pb(resp: rpc.ResponseOp) -> list[KeyValue] | int | None:
    kind = resp.WhichOneof("response")
    if kind == "response_range":
        return [kv_from_pb(kv) for kv in resp.response_range.kvs]
    if kind == "response_delete_range":
        return int(resp.response_delete_range.deleted)
    return None
