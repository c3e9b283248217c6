"""The real control-plane API served from this test process, so a test can reach its state.

Same app, same etcd, real HTTP on 127.0.0.1; only the process differs from `infermesh api`. Its
event loop runs in a thread of its own; `run` hands it a coroutine, e.g. one SLO evaluation
pass at a chosen time (`evaluate`), instead of waiting for the evaluator's timer (the API is
started with its SLO loop off).
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Coroutine
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

import httpx
import uvicorn

from infermesh.store.api.server import create_app
from infermesh.store.api.state import ApiState, Settings
from infermesh.store.auth import new_token
from infermesh.store.etcd_server import EmbeddedEtcd, free_port
from infermesh.store.slo.evaluator import PassResult, SloEvaluator

T = TypeVar("T")


class InProcessApi:
    def __init__(self, etcd: EmbeddedEtcd, series_db: Path, **settings: Any) -> None:
        """`settings`: more `Settings` fields (e.g. `prometheus_url`)."""
        self.etcd = etcd
        self.token = new_token()
        self.prefix = f"/t-{uuid.uuid4().hex[:10]}"
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        settings = Settings(
            etcd_endpoints=etcd.endpoints,
            prefix=self.prefix,
            bootstrap_token=self.token,
            identity=f"api-test@{port}",
            series_db=series_db,
            slo_interval_s=0,  # no timer: tests run passes with `evaluate`
            **settings,
        )
        app = create_app(settings)
        self.state: ApiState = app.state.mesh
        # Lifespan off: the state is started here, without the server's gc tuning, which would
        # reach the whole test process.
        config = uvicorn.Config(
            app, host="127.0.0.1", port=port, lifespan="off", log_level="warning"
        )
        self._server = uvicorn.Server(config)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="api", daemon=True)
        self._thread.start()
        self._serving: Future[None] | None = None
        try:
            self.run(self.state.start())
            self._serving = asyncio.run_coroutine_threadsafe(self._server.serve(), self._loop)
            deadline = time.monotonic() + 30
            while not self._server.started:
                if self._serving.done() or time.monotonic() > deadline:
                    raise RuntimeError(f"in-process API did not start: {self._serving}")
                time.sleep(0.02)
        except BaseException:
            self.stop()
            raise

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        """Run a coroutine on the API's event loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def evaluate(self, now: float) -> PassResult:
        """One SLO evaluation pass at `now` (epoch seconds), as the evaluator's timer would."""
        return self.evaluate_with(self.state.slos, now)

    def evaluate_with(self, evaluator: SloEvaluator, now: float) -> PassResult:
        """One pass of another evaluator (an API replica's) on this API's loop; returns once
        the API serves what it wrote."""
        result = self.run(evaluator.evaluate_once(now))
        if result.revision:
            assert self.run(self.state.reports["slos"].wait_for(result.revision, timeout=10))
        return result

    def headers(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.token}"}

    def client(self, token: str | None = None) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.headers(token), timeout=10)

    def stop(self) -> None:
        if self._serving is not None:
            self._server.should_exit = True
            self._serving.result(15)
        self.run(self.state.stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
