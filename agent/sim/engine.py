"""The engine: one asyncio task per simulator that runs the scheduler's steps in real time.

Each step is slept for `Step.seconds` x slow factor x thermal slowdown x `time_scale` (0.1 runs
ten times faster than the model), then its tokens go to the requests that wait for them, each
on a queue of its own. Sleeps aim at a running deadline, so timer overshoot in a busy process
is caught up on the next step instead of piling up.

Requests consume `generate()`, an async generator; leaving it early (a client disconnect, a stop
string) aborts the sequence, which frees its slot and KV blocks on the spot.

Latency metrics are observed in wall-clock seconds, what a client sees (equal to the model's
seconds at time_scale 1). The simulated GPU runs on simulated seconds.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Callable, Hashable, Sequence
from dataclasses import dataclass

from infermesh.agent.sim.faults import Faults
from infermesh.agent.sim.gpu import SimulatedGpu
from infermesh.agent.sim.metrics import LiveState, SimMetrics
from infermesh.agent.sim.scheduler import NewSequence, Scheduler, Step, TokenOutput


class EngineClosed(Exception):
    """The engine stopped (shutdown or crash) before the request finished."""


_CLOSED = object()


@dataclass
class _Pending:
    queue: asyncio.Queue[TokenOutput | object]
    arrival: float
    prompt_tokens: int
    finish_reason: str
    last_token_at: float | None = None


class Engine:
    def __init__(
        self,
        scheduler: Scheduler,
        gpu: SimulatedGpu,
        metrics: SimMetrics,
        faults: Faults,
        *,
        time_scale: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if time_scale <= 0:
            raise ValueError("time_scale must be greater than 0")
        self.scheduler = scheduler
        self.gpu = gpu
        self._metrics = metrics
        self._faults = faults
        self._time_scale = time_scale
        self._clock = clock
        self._epoch = clock()
        self._pending: dict[str, _Pending] = {}
        self._ids = itertools.count()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._deadline = 0.0
        self._busy_since: float | None = None
        self._batch = 0

    def sim_now(self) -> float:
        return (self._clock() - self._epoch) / self._time_scale

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="sim-engine")

    async def close(self) -> None:
        """End every request (their generators raise EngineClosed) and stop the step loop."""
        self._closed = True
        for request_id, pending in list(self._pending.items()):
            self.scheduler.abort(request_id)
            pending.queue.put_nowait(_CLOSED)
        self._pending.clear()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def generate(
        self, prompt: Sequence[Hashable], output_tokens: int, *, finish_reason: str
    ) -> AsyncIterator[TokenOutput]:
        """Tokens of one request as the engine produces them; `finish_reason` is what its
        natural end counts as in the metrics. Close it (`contextlib.aclosing`) when leaving
        early."""
        if self._closed:
            raise EngineClosed("the engine is shut down")
        request_id = f"seq-{next(self._ids)}"
        self.scheduler.add(NewSequence(request_id, prompt, output_tokens))
        pending = _Pending(asyncio.Queue(), self._clock(), len(prompt), finish_reason)
        self._pending[request_id] = pending
        self._wake.set()
        try:
            while True:
                item = await pending.queue.get()
                if not isinstance(item, TokenOutput):
                    raise EngineClosed("the engine shut down during the request")
                yield item
                if item.finished:
                    return
        finally:
            self.abort(request_id)

    def abort(self, request_id: str, reason: str = "abort") -> None:
        """Stop a request now, counted as finished for `reason`; no-op once it is over."""
        pending = self._pending.pop(request_id, None)
        if pending is None:
            return
        self.scheduler.abort(request_id)
        self._metrics.finished(reason, self._clock() - pending.arrival)

    def live_state(self) -> LiveState:
        self._account_gpu()
        return LiveState(
            num_running=self.scheduler.num_running,
            num_waiting=self.scheduler.num_waiting,
            kv_usage=self.scheduler.kv_usage,
            gpu=self.gpu.reading(),
        )

    async def _run(self) -> None:
        while True:
            step = self.scheduler.step()
            if step is None:
                self._wake.clear()
                await self._wake.wait()
                continue
            seconds = step.seconds * self._faults.slow_factor * self.gpu.slowdown
            self._account_gpu()
            self._busy_since, self._batch = self.sim_now(), step.batch_size
            self._deadline = max(self._deadline, self._clock()) + seconds * self._time_scale
            await asyncio.sleep(max(0.0, self._deadline - self._clock()))
            self._account_gpu()
            self._busy_since = None
            self._deliver(step)

    def _account_gpu(self) -> None:
        """Bring the GPU up to now: busy since the step began, idle otherwise."""
        now = self.sim_now()
        busy = 0.0
        if self._busy_since is not None:
            busy, self._busy_since = now - self._busy_since, now
        kv_tokens = self.scheduler.used_blocks * self.scheduler.config.block_size
        self.gpu.advance(now, busy_s=busy, batch=self._batch, kv_tokens=kv_tokens)

    def _deliver(self, step: Step) -> None:
        now = self._clock()
        metrics = self._metrics
        for out in step.outputs:
            pending = self._pending.get(out.request_id)
            if pending is None:
                continue  # aborted while the step ran
            if pending.last_token_at is None:
                metrics.first_token(pending.prompt_tokens, now - pending.arrival)
            else:
                metrics.next_token(now - pending.last_token_at)
            pending.last_token_at = now
            pending.queue.put_nowait(out)
            if out.finished:
                del self._pending[out.request_id]
                metrics.finished(pending.finish_reason, now - pending.arrival)
        if step.preempted:
            metrics.preemptions.inc(len(step.preempted))
        if step.cache_queried_tokens:
            metrics.cache_queries.inc(step.cache_queried_tokens)
            metrics.cache_hits.inc(step.cache_hit_tokens)
