"""What the console knows: every object it follows, by collection and row key, and the few
things derived from them (each GPU's recent utilisation, the SLOs of each endpoint).

Collections: the watched kinds by plural ("nodes", "endpoints", "jobs", ...), "slos" (listed),
"metrics" (per endpoint key: the SLI totals of the last minutes) and "events" (by event id, the
newest `max_events` kept). `apply` takes one coalesced batch; no I/O, no widgets.
"""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Mapping
from typing import Any

Obj = dict[str, Any]
HISTORY = 60  # utilisation samples kept per GPU for the sparklines


class ConsoleState:
    def __init__(self, *, max_events: int = 1000) -> None:
        self.objects: dict[str, dict[str, Obj]] = defaultdict(dict)
        self.max_events = max_events
        self.util: dict[str, dict[int, deque[float]]] = {}
        self._slo_index: dict[str, list[Obj]] | None = None

    def apply(self, kind: str, changes: Mapping[str, Obj | None], reset: bool = False) -> set[str]:
        """Take one batch of one collection: each key's new object (None: gone); with `reset`
        the batch is the whole collection. Returns the keys whose rows may have changed."""
        table = self.objects[kind]
        touched = set(changes)
        if reset:
            touched |= set(table) - set(changes)
            table.clear()
            table.update({k: v for k, v in changes.items() if v is not None})
        else:
            for key, obj in changes.items():
                if obj is None:
                    table.pop(key, None)
                else:
                    table[key] = obj
        if kind == "nodes":
            self._record_util(changes, reset)
        elif kind == "slos":
            self._slo_index = None
        elif kind == "events" and len(table) > self.max_events:
            for key in sorted(table, key=lambda k: str(table[k].get("time", "")))[
                : len(table) - self.max_events
            ]:
                del table[key]
                touched.add(key)
        return touched

    def _record_util(self, changes: Mapping[str, Obj | None], reset: bool) -> None:
        if reset:
            for key in set(self.util) - set(changes):
                del self.util[key]
        for key, obj in changes.items():
            if obj is None:
                self.util.pop(key, None)
                continue
            gpus = (obj.get("status") or {}).get("gpus")
            if not isinstance(gpus, list):
                continue
            per_gpu = self.util.setdefault(key, {})
            for i, gpu in enumerate(gpus):
                if isinstance(gpu, dict) and gpu.get("utilPct") is not None:
                    index = gpu.get("index", i)
                    series = per_gpu.setdefault(index, deque(maxlen=HISTORY))
                    series.append(float(gpu["utilPct"]))

    # --- lookups ---------------------------------------------------------------------------

    def endpoint_slos(self, endpoint_key: str) -> list[Obj]:
        """The SLOs about one endpoint (`project/name`): implicit ones and SLO objects."""
        if self._slo_index is None:
            index: dict[str, list[Obj]] = {}
            for slo in self.objects.get("slos", {}).values():
                target = (slo.get("spec") or {}).get("target") or {}
                if target.get("kind") != "Endpoint":
                    continue
                project = (slo.get("metadata") or {}).get("project") or "default"
                index.setdefault(f"{project}/{target.get('name')}", []).append(slo)
            self._slo_index = index
        return self._slo_index.get(endpoint_key, [])

    def events_about(self, kind: str, key: str, limit: int = 6) -> list[Obj]:
        """The newest events naming one object (`project/name`), newest first."""
        project, _, name = key.partition("/")
        found = [
            e
            for e in self.objects.get("events", {}).values()
            if e.get("kind") == kind
            and e.get("name") == name
            and (e.get("project") or "default") == project
        ]
        found.sort(key=lambda e: str(e.get("time", "")), reverse=True)
        return found[:limit]
