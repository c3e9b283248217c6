"""The control-plane API server (`infermesh api`): app assembly and `serve`."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import uvicorn
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError

import infermesh
from infermesh.errors import MeshError
from infermesh.store.api import (
    actions,
    admin,
    endpoints,
    jobs,
    nodes,
    objects,
    series,
    slos,
    streams,
)
from infermesh.store.api.http import (
    BodyLimit,
    RequestMetrics,
    mesh_error_handler,
    unexpected_error_handler,
    validation_error_handler,
)
from infermesh.store.api.state import ApiState, Settings
from infermesh.store.series import (
    DEFAULT_MAX_BYTES,
    DEFAULT_RAW_RETENTION_S,
    DEFAULT_RETENTION_S,
    DEFAULT_SETTLE_S,
    default_path,
)
from infermesh.store.slo.evaluator import DEFAULT_INTERVAL_S

log = logging.getLogger(__name__)


def create_app(settings: Settings) -> FastAPI:
    state = ApiState(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await state.start()
        # The watch cache holds many long-lived objects; full collections would scan them over
        # and over (tens of ms each, the write latency tail) and free nothing.
        gc.collect()
        gc.freeze()
        gc.set_threshold(100_000, 50, 100)
        log.info(
            "control-plane API ready on etcd %s (prefix %s)",
            ",".join(settings.etcd_endpoints),
            settings.prefix,
        )
        try:
            yield
        finally:
            await state.stop()

    app = FastAPI(
        title="InferMesh control plane",
        version=infermesh.__version__,
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.mesh = state
    # Fixed paths before the generic /v1/{plural} routes, which would otherwise swallow them.
    app.include_router(admin.router)
    app.include_router(nodes.router)
    app.include_router(jobs.router)
    app.include_router(endpoints.router)
    app.include_router(slos.router)
    app.include_router(streams.router)
    app.include_router(series.router)
    app.include_router(actions.router)
    app.include_router(objects.router)
    app.add_exception_handler(MeshError, mesh_error_handler)
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    app.add_exception_handler(Exception, unexpected_error_handler)
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    app.add_middleware(RequestMetrics)
    return app


def serve(
    *,
    etcd_endpoints: list[str],
    host: str = "127.0.0.1",
    port: int = 8080,
    prefix: str = "/infermesh",
    bootstrap_token: str | None = None,
    max_body_bytes: int = 1 << 20,
    series_db: Path | None = None,
    series_retention_s: int = DEFAULT_RETENTION_S,
    series_raw_retention_s: int = DEFAULT_RAW_RETENTION_S,
    series_max_bytes: int = DEFAULT_MAX_BYTES,
    series_settle_s: int = DEFAULT_SETTLE_S,
    slo_interval_s: float = DEFAULT_INTERVAL_S,
    prometheus_url: str | None = None,
    prometheus_project: str = "default",
) -> None:
    """Run the API until interrupted."""
    settings = Settings(
        etcd_endpoints=etcd_endpoints,
        prefix=prefix,
        bootstrap_token=bootstrap_token,
        max_body_bytes=max_body_bytes,
        identity=f"api@{host}:{port}",
        series_db=series_db or default_path(),
        series_retention_s=series_retention_s,
        series_raw_retention_s=series_raw_retention_s,
        series_max_bytes=series_max_bytes,
        series_settle_s=series_settle_s,
        slo_interval_s=slo_interval_s,
        prometheus_url=prometheus_url,
        prometheus_project=prometheus_project,
    )
    uvicorn.run(
        create_app(settings),
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=5,
    )
