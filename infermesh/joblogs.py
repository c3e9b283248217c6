"""Job logs as the SDK hands them over: the query of `GET /v1/jobs/{name}/logs` and its answers.

The scheduler keeps a job's last few hundred lines; `MeshClient.job_logs` reads them and
`MeshClient.follow_job_logs` streams them as the ranks print.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx
from httpx_sse import ServerSentEvent

from infermesh.answers import body_of


@dataclass(frozen=True)
class LogLine:
    attempt: int  # the job's attempt when the line was read (it grows with each restart)
    rank: int  # -1: a line of the scheduler's own (where an attempt starts)
    time: str  # ISO 8601
    line: str


@dataclass
class JobLogs:
    attempt: int
    lines: list[LogLine]  # oldest first


def logs_query(project: str, rank: int | None, tail: int | None) -> dict[str, str]:
    params = {"project": project}
    if rank is not None:
        params["rank"] = str(rank)
    if tail is not None:
        params["tail"] = str(tail)
    return params


def _job_logs(body: dict[str, Any]) -> JobLogs:
    attempt = int(body.get("attempt") or 0)
    lines = [
        LogLine(attempt, int(x.get("rank", 0)), str(x.get("time", "")), str(x.get("line", "")))
        for x in body.get("lines") or []
    ]
    return JobLogs(attempt, lines)


def read_job_logs(resp: httpx.Response) -> JobLogs:
    return _job_logs(body_of(resp) or {})


def streamed_lines(sse: ServerSentEvent) -> list[LogLine]:
    """The lines one event of a followed log carries (none for any other event)."""
    return _job_logs(sse.json()).lines if sse.event == "lines" else []
