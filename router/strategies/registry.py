"""Which `RoutingStrategy` a reference names, configured with its params, built once.

A reference (`hybrid_mesh@1.0`, `hybrid_mesh`, `my-tuned-mesh`) resolves, in this order, to:

1. a Strategy object of the project with that name (bare names match any revision): a built-in
   it tunes (`plugin: builtin`) or a class it imports (`plugin: python`, `entryPoint:
   module:attr`), configured with its `spec.params` overlaid by the endpoint's params;
2. a built-in inference strategy, with the endpoint's params;
3. a class installed under the Python entry-point group `infermesh.strategies`.

A plugin class implements `RoutingStrategy` and takes its params as keyword arguments. Results
(and failures) are cached by (reference, params, Strategy object and its resourceVersion), so a
request pays one dictionary lookup and a strategy's per-CandidateSet memo survives; a change
of the object builds it again. Every failure is a `StrategyError` naming what is at fault.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Iterable, Mapping
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from infermesh.model import Strategy, builtin_named, name_matches
from infermesh.router.strategies.base import RoutingStrategy, StrategyError
from infermesh.router.strategies.classic import BaselineRR, LeastQueue, PowerOfTwo, PrefixAffinity
from infermesh.router.strategies.hybrid import HybridMesh

ENTRY_POINT_GROUP = "infermesh.strategies"
BUILTINS: dict[str, type[RoutingStrategy]] = {
    cls.name: cls for cls in (BaselineRR, LeastQueue, PowerOfTwo, PrefixAffinity, HybridMesh)
}

# (ref, params as JSON, (project, name) of the Strategy object or None) ->
#     (the object's resourceVersion, the strategy or the message of its failure)
_Key = tuple[str, str, tuple[str, str] | None]
_Entry = tuple[str | None, RoutingStrategy | str]


class StrategyRegistry:
    """Resolves strategy references; one per router. `plugins` replaces the installed entry
    points of group `infermesh.strategies` (embedding, tests)."""

    def __init__(self, plugins: Iterable[EntryPoint] | None = None) -> None:
        self._plugins: tuple[EntryPoint, ...] | None = None if plugins is None else tuple(plugins)
        self._cache: dict[_Key, _Entry] = {}
        self._fallback: RoutingStrategy | None = None

    def fallback(self) -> RoutingStrategy:
        """The strategy to route with when the configured one cannot be resolved."""
        if self._fallback is None:
            self._fallback = LeastQueue()
        return self._fallback

    def resolve(
        self,
        ref: str,
        strategy_objects: Mapping[str, Strategy],
        endpoint_params: Mapping[str, Any] | None = None,
    ) -> RoutingStrategy:
        params = dict(endpoint_params or {})
        obj = _find_object(ref, strategy_objects)
        identity = None if obj is None else (obj.metadata.project, obj.metadata.name)
        version = None if obj is None else obj.metadata.resourceVersion
        frozen = json.dumps(params, sort_keys=True, default=repr) if params else ""
        key = (ref, frozen, identity)
        cached = self._cache.get(key)
        if cached is None or cached[0] != version:
            try:
                built: RoutingStrategy | str = self._build(ref, obj, params)
            except StrategyError as e:
                built = str(e)
            cached = self._cache[key] = (version, built)
        if isinstance(cached[1], str):
            raise StrategyError(cached[1])
        return cached[1]

    def _build(self, ref: str, obj: Strategy | None, params: dict[str, Any]) -> RoutingStrategy:
        if obj is None:
            builtin = builtin_named(ref)
            if builtin is not None:
                return _construct(_builtin_class(builtin, f"strategy {ref!r}"), params, "")
            plugin = self._plugin(ref)
            if plugin is not None:
                where = f"entry point {plugin.name!r} ({plugin.value})"
                return _construct(_load(plugin.load, where), params, f"{where}: ")
            raise StrategyError(
                f"no strategy named {ref!r}: it is not a Strategy object of this project, a "
                f"built-in ({', '.join(BUILTINS)}) or an installed plugin (entry-point group "
                f"{ENTRY_POINT_GROUP})"
            )
        name, spec = obj.metadata.name, obj.spec
        where = f"Strategy {name!r}"
        if spec.kind != "inference":
            raise StrategyError(
                f"{where} is a {spec.kind} strategy; endpoints route with inference"
            )
        merged = {**spec.params, **params}  # the endpoint's params win
        if spec.plugin == "builtin":
            builtin = builtin_named(spec.entryPoint or name)
            if builtin is None:  # the model rejects this on write; a stale object may have it
                raise StrategyError(f"{where}: no built-in is named {spec.entryPoint or name!r}")
            return _construct(_builtin_class(builtin, where), merged, f"{where}: ")
        if spec.plugin == "python" and spec.entryPoint:
            entry = spec.entryPoint
            cls = _load(lambda: _import(entry), f"{where} (spec.entryPoint {entry!r})")
            return _construct(cls, merged, f"{where}: ")
        raise StrategyError(
            f"{where}: {spec.plugin} plugins are not supported by this router; use builtin or "
            "python (spec.plugin)"
        )

    def _plugin(self, ref: str) -> EntryPoint | None:
        if self._plugins is None:
            self._plugins = tuple(entry_points(group=ENTRY_POINT_GROUP))
        return next(
            (
                ep
                for ep in self._plugins
                if name_matches(ref, ep.name) or name_matches(ep.name, ref)
            ),
            None,
        )


def _find_object(ref: str, objects: Mapping[str, Strategy]) -> Strategy | None:
    exact = objects.get(ref)
    if exact is not None:
        return exact
    found = sorted(name for name in objects if name_matches(ref, name))
    if len(found) > 1:
        raise StrategyError(
            f"strategy {ref!r} names several Strategy objects ({', '.join(found)}); "
            "name one with its @revision"
        )
    return objects[found[0]] if found else None


def _builtin_class(builtin: str, where: str) -> type[RoutingStrategy]:
    cls = BUILTINS.get(builtin)
    if cls is None:
        raise StrategyError(f"{where}: {builtin} is a training strategy, not a routing one")
    return cls


def _import(entry: str) -> Any:
    module_name, _, attr = entry.partition(":")
    target: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        target = getattr(target, part)
    return target


def _load(load: Any, where: str) -> type[RoutingStrategy]:
    """Import a plugin and check it is a strategy class."""
    try:
        cls = load()
    except Exception as e:  # any import-time failure of someone else's module
        raise StrategyError(f"{where}: cannot import it: {type(e).__name__}: {e}") from e
    if not isinstance(cls, type) or not callable(getattr(cls, "decide", None)):
        raise StrategyError(f"{where}: {cls!r} is not a class with a decide() method")
    if not isinstance(getattr(cls, "name", None), str) or not isinstance(
        getattr(cls, "network_aware", None), bool
    ):
        raise StrategyError(
            f"{where}: {cls.__qualname__} must set class attributes name (str) and "
            "network_aware (bool)"
        )
    return cls


def _construct(cls: type[RoutingStrategy], params: dict[str, Any], where: str) -> RoutingStrategy:
    try:
        return cls(**params)
    except StrategyError as e:
        raise StrategyError(f"{where}{e}") from e
    except Exception as e:  # a plugin's constructor: report it, never crash the router
        raise StrategyError(
            f"{where}{cls.name} cannot be built with params {params}: {type(e).__name__}: {e}"
        ) from e
