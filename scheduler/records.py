"""What the scheduler writes to etcd: job status, rank log tails and events.

Every status and log write is fenced by the leader election, so a scheduler that lost leadership
and has not noticed yet cannot overwrite what its successor wrote. Events are plain records under
the events prefix, bound to the shared rotating events lease (they are history, not state).
"""

from __future__ import annotations

import json
import logging
from collections import deque
from typing import Any

from infermesh.errors import EtcdUnavailable
from infermesh.store.committer import EventLease, event_record, now
from infermesh.store.election import LeaderElection
from infermesh.store.etcd import EtcdStore, LeaseNotFound, Op
from infermesh.store.keys import KeyLayout

log = logging.getLogger(__name__)

ACTOR = "system:scheduler"
LOG_LINES = 500  # lines kept per job in its log tail


def split_key(key: str) -> tuple[str, str]:
    project, _, name = key.partition("/")
    return project, name


class NotLeader(Exception):
    """A fenced write failed: another scheduler leads now."""


class Records:
    def __init__(self, store: EtcdStore, keys: KeyLayout, election: LeaderElection) -> None:
        self._store = store
        self._keys = keys
        self._election = election
        self._events = EventLease(store)
        self._logs: dict[str, deque[dict[str, Any]]] = {}
        self._log_attempt: dict[str, int] = {}

    def status_key(self, job: str) -> str:
        return self._keys.status("jobs", *split_key(job))

    def logs_key(self, job: str) -> str:
        return self._keys.logs("jobs", *split_key(job))

    async def put_status(self, job: str, status: dict[str, Any]) -> None:
        await self._fenced_put(self.status_key(job), status)

    async def read_statuses(self) -> dict[str, dict[str, Any]]:
        """Every job status a leader wrote before, by job key."""
        items, _ = await self._store.list_prefix(self._keys.statuses("jobs"))
        out = {}
        for kv in items:
            ident = self._keys.parse_status(kv.key)
            out[f"{ident.project}/{ident.name}"] = json.loads(kv.value)
        return out

    async def forget(self, job: str) -> None:
        """The Job object is gone: drop its status and logs (fenced, like every write)."""
        self._logs.pop(job, None)
        await self._fenced([Op.delete(self.status_key(job)), Op.delete(self.logs_key(job))])

    def add_logs(self, job: str, attempt: int, rank: int, lines: list[str]) -> None:
        if self._log_attempt.get(job) != attempt:
            self._log_attempt[job] = attempt
            tail = self._logs.setdefault(job, deque(maxlen=LOG_LINES))
            tail.append({"time": now(), "rank": -1, "line": f"--- attempt {attempt} ---"})
        tail = self._logs.setdefault(job, deque(maxlen=LOG_LINES))
        stamp = now()
        tail.extend({"time": stamp, "rank": rank, "line": line} for line in lines)

    async def flush_logs(self, job: str) -> None:
        tail = self._logs.get(job)
        if tail is not None:
            doc = {"attempt": self._log_attempt.get(job, 0), "lines": list(tail)}
            await self._fenced_put(self.logs_key(job), doc)

    async def event(self, job: str, reason: str, message: str, *, warning: bool = False) -> None:
        project, name = split_key(job)
        record = event_record(
            kind="Job",
            project=project,
            name=name,
            reason=reason,
            message=message,
            actor=ACTOR,
            warning=warning,
        )
        log.info("job %s: %s: %s", job, reason, message)
        try:
            lease = await self._events.id()
            await self._store.put(
                self._keys.event(project, record["id"]), json.dumps(record), lease=lease
            )
        except LeaseNotFound:
            self._events.forget()
        except EtcdUnavailable as exc:  # history only: the status write carries the state
            log.warning("job %s: event %s not recorded: %s", job, reason, exc)

    async def _fenced_put(self, key: str, value: dict[str, Any]) -> None:
        await self._fenced([Op.put(key, json.dumps(value, separators=(",", ":")))])

    async def _fenced(self, ops: list[Op]) -> None:
        result = await self._store.txn([self._election.fence()], ops)
        if not result.succeeded:
            raise NotLeader(f"{self._election.identity} no longer leads {self._election.key}")
