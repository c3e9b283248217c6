"""Routing strategies: the `RoutingStrategy` contract, the built-ins and their registry."""

from infermesh.router.strategies.base import (
    CandidateSet,
    Decision,
    HedgePlan,
    LiveState,
    RequestContext,
    RoutingStrategy,
    StrategyError,
)
from infermesh.router.strategies.classic import BaselineRR, LeastQueue, PowerOfTwo, PrefixAffinity
from infermesh.router.strategies.hybrid import HybridMesh
from infermesh.router.strategies.network import LINK_CLASSES, OriginNetwork, origin_network
from infermesh.router.strategies.registry import (
    BUILTINS,
    ENTRY_POINT_GROUP,
    StrategyRegistry,
)

__all__ = [
    "BUILTINS",
    "ENTRY_POINT_GROUP",
    "LINK_CLASSES",
    "BaselineRR",
    "CandidateSet",
    "Decision",
    "HedgePlan",
    "HybridMesh",
    "LeastQueue",
    "LiveState",
    "OriginNetwork",
    "PowerOfTwo",
    "PrefixAffinity",
    "RequestContext",
    "RoutingStrategy",
    "StrategyError",
    "StrategyRegistry",
    "origin_network",
]
