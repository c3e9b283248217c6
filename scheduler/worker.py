"""Dask preload that makes a worker of a real cluster stand for one GPU node.

    INFERMESH_NODE_CLASS=h100-80g INFERMESH_NODE_ZONE=eu-west-1a INFERMESH_NODE_REGION=eu-west-1 \\
    INFERMESH_NODE_DOMAIN=cloud-eu INFERMESH_NODE_ISLAND=nvl-0 INFERMESH_NODE_SPOT=false \\
    dask worker tcp://scheduler:8786 --resources GPU=8 --name default/gpu-17 \\
        --preload infermesh.scheduler.worker

The worker's name is the node key (`project/name`); the INFERMESH_NODE_* variables that are set
become the node's facts, registered with the scheduler by `NodeFactsPlugin` as the local cluster
does.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from infermesh.scheduler.cluster import NodeFactsPlugin, is_node_key

FACT_ENV = {
    "node_class": "INFERMESH_NODE_CLASS",
    "zone": "INFERMESH_NODE_ZONE",
    "region": "INFERMESH_NODE_REGION",
    "domain": "INFERMESH_NODE_DOMAIN",
    "island": "INFERMESH_NODE_ISLAND",
    "spot": "INFERMESH_NODE_SPOT",
}

log = logging.getLogger(__name__)


def facts_from_env(env: dict[str, str] | os._Environ[str]) -> dict[str, str]:
    return {fact: env[var] for fact, var in FACT_ENV.items() if env.get(var)}


async def dask_setup(worker: Any) -> None:
    # Preloads start before the worker registers, so the facts travel with its registration.
    if not is_node_key(worker.name):
        log.warning(
            "worker name %r is not a node key (project/name): the InferMesh scheduler will "
            "not use this worker; start it with --name <project>/<node>",
            worker.name,
        )
    await worker.plugin_add(NodeFactsPlugin(facts_from_env(os.environ)), catch_errors=False)
