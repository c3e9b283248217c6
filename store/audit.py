"""The audit log: an append-only, hash-chained record of every mutation.

Each record carries the hash of the one before it, so editing or removing any record breaks the
chain from that point on; `verify` finds the first break. Records are written in the same etcd
transaction as the change they describe (see `store.committer`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

GENESIS = "0" * 64
_MAX_DIFF_VALUE = 2_000  # characters of one before/after value kept in a diff entry


def canonical(data: Any) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), default=str).encode()


def record_hash(record: dict[str, Any]) -> str:
    body = {k: v for k, v in record.items() if k != "hash"}
    return hashlib.sha256(canonical(body)).hexdigest()


def seal(record: dict[str, Any], seq: int, prev_hash: str) -> dict[str, Any]:
    """Give a record its place in the chain."""
    sealed = {**record, "seq": seq, "prev_hash": prev_hash}
    sealed["hash"] = record_hash(sealed)
    return sealed


def diff(before: Any, after: Any, path: str = "") -> list[dict[str, Any]]:
    """Leaf-level differences as `{path, before, after}`, server bookkeeping left out."""
    if isinstance(before, dict) and isinstance(after, dict):
        out: list[dict[str, Any]] = []
        for key in sorted(set(before) | set(after)):
            if key in _BOOKKEEPING and path in ("metadata", ""):
                continue
            sub = f"{path}.{key}" if path else key
            out.extend(diff(before.get(key), after.get(key), sub))
        return out
    if before == after:
        return []
    return [{"path": path, "before": _clip(before), "after": _clip(after)}]


_BOOKKEEPING = {"resourceVersion", "updateTimestamp", "generation"}


def _clip(value: Any) -> Any:
    text = json.dumps(value, default=str)
    return value if len(text) <= _MAX_DIFF_VALUE else text[:_MAX_DIFF_VALUE] + "…"


@dataclass(frozen=True, slots=True)
class Head:
    seq: int
    hash: str
    mod_revision: int  # of the head key; 0 when the log is empty

    @classmethod
    def empty(cls) -> Head:
        return cls(0, GENESIS, 0)


@dataclass(frozen=True, slots=True)
class VerifyResult:
    ok: bool
    records: int
    head_hash: str
    broken_seq: int | None = None
    problem: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "records": self.records,
            "headHash": self.head_hash,
            "brokenSeq": self.broken_seq,
            "problem": self.problem,
        }


def verify(records: list[dict[str, Any]], head: dict[str, Any] | None) -> VerifyResult:
    """Check sequence, links and hashes of the whole chain, and that the head points at its end."""
    prev = GENESIS
    for expected_seq, record in enumerate(records, start=1):
        seq = record.get("seq")
        if seq != expected_seq:
            return VerifyResult(
                False,
                len(records),
                prev,
                expected_seq,
                f"record {expected_seq} is missing (found seq {seq})",
            )
        if record.get("prev_hash") != prev:
            return VerifyResult(
                False, len(records), prev, seq, f"record {seq} does not link to record {seq - 1}"
            )
        if record_hash(record) != record.get("hash"):
            return VerifyResult(
                False,
                len(records),
                prev,
                seq,
                f"record {seq} was altered: its content does not match its hash",
            )
        prev = record["hash"]
    count = len(records)
    if head is None:
        if count:
            return VerifyResult(False, count, prev, count, "audit head is missing")
    elif head.get("seq") != count or head.get("hash") != prev:
        return VerifyResult(
            False,
            count,
            prev,
            head.get("seq"),
            f"audit head (seq {head.get('seq')}) does not match the last record "
            f"(seq {count}): records were removed",
        )
    return VerifyResult(True, count, prev)
