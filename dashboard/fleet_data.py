"""Nodes as the Fleet page shows them: a row per node (its agent's GPU readings summed up), the
heatmap's cells by (domain, class), the conditions worth a look, and the filters. Pure
functions of what `GET /v1/nodes` answers (the report's shape: agent/report.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from infermesh.cli.printers import age, condition, dig, node_status

Obj = dict[str, Any]

# Heatmap readings: column, title, unit, colour scale maximum.
READINGS: dict[str, tuple[str, str, float | None]] = {
    "Util": ("Util %", "%", 100.0),
    "VRAM": ("VRAM %", "%", 100.0),
    "Temp": ("Temp °C", "°C", 95.0),
}
READING_TITLES = {"Util": "GPU utilisation", "VRAM": "VRAM used", "Temp": "Hottest GPU"}
STATES = ("Ready", "NotReady", "Unknown", "Cordoned", "Draining", "Drained", "Quarantined")
# A condition's status on a healthy node; other types are read the Kubernetes way (True: good).
NOMINAL = {
    "Ready": "True",
    "ResolvedRefs": "True",
    "Cordoned": "False",
    "Draining": "False",
    "Drained": "False",
    "Quarantined": "False",
}
COLUMNS = [
    "Node",
    "Domain",
    "Class",
    "GPUs",
    "Util %",
    "VRAM %",
    "VRAM GiB",
    "Temp °C",
    "Power W",
    "In flight",
    "Status",
    "Reason",
    "Heartbeat",
]


def _gpus(node: Obj) -> list[Obj]:
    gpus = dig(node, "status.gpus")
    return [g for g in gpus if isinstance(g, dict)] if isinstance(gpus, list) else []


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 1) if values else None


def node_row(node: Obj) -> Obj:
    gpus = _gpus(node)
    facts = dig(node, "status.facts") or {}
    used = sum(float(g.get("memUsedMiB") or 0) for g in gpus)
    total = sum(float(g.get("memTotalMiB") or 0) for g in gpus)
    temps = [float(g["tempC"]) for g in gpus if g.get("tempC") is not None]
    watts = [float(g["powerW"]) for g in gpus if g.get("powerW") is not None]
    count = len(gpus) or facts.get("gpuCount") or 0
    name = facts.get("gpu") or (gpus[0].get("name") if gpus else None)
    return {
        "Node": str(dig(node, "metadata.name")),
        "Domain": dig(node, "spec.domain") or facts.get("domain") or "",
        "Class": dig(node, "spec.nodeClassRef") or facts.get("nodeClass") or "",
        "GPUs": f"{count}x{name}" if count and name else str(count or ""),
        "Util %": _mean([float(g.get("utilPct") or 0) for g in gpus]),
        "VRAM %": round(used / total * 100, 1) if total else None,
        "VRAM GiB": f"{used / 1024:.0f}/{total / 1024:.0f}" if total else "",
        "Temp °C": max(temps) if temps else None,
        "Power W": round(sum(watts)) if watts else None,
        "In flight": dig(node, "status.inFlight"),
        "Status": node_status(node),
        "Reason": dig(node, "spec.quarantine.reason") or dig(node, "spec.drain.reason") or "",
        "Heartbeat": age(dig(node, "status.heartbeat")) if dig(node, "status.heartbeat") else "",
    }


def frame(nodes: list[Obj]) -> pd.DataFrame:
    rows = sorted((node_row(n) for n in nodes), key=lambda r: (r["Domain"], r["Class"], r["Node"]))
    return pd.DataFrame(rows, columns=COLUMNS)


@dataclass(frozen=True)
class Filters:
    domains: tuple[str, ...] = ()
    classes: tuple[str, ...] = ()
    states: tuple[str, ...] = ()  # any of these words in the node's status
    text: str = ""  # part of the node's name


def apply(nodes: pd.DataFrame, f: Filters) -> pd.DataFrame:
    keep = pd.Series(True, index=nodes.index)
    if f.domains:
        keep &= nodes["Domain"].isin(f.domains)
    if f.classes:
        keep &= nodes["Class"].isin(f.classes)
    if f.states:
        words = nodes["Status"].str.split(",")
        keep &= words.map(lambda ws: any(w in f.states for w in ws))
    if f.text.strip():
        keep &= nodes["Node"].str.contains(f.text.strip(), case=False, regex=False)
    return nodes[keep].reset_index(drop=True)


@dataclass(frozen=True)
class Grid:
    """The heatmap: a row per (domain, class), a cell per node (None pads short rows)."""

    rows: list[str]
    z: list[list[float | None]]
    text: list[list[str]]


def grid(nodes: pd.DataFrame, reading: str) -> Grid:
    column = READINGS[reading][0]
    groups: dict[str, list[tuple[str, float | None, str]]] = {}
    for values in nodes.to_dict("records"):
        key = f"{values['Domain'] or '?'} · {values['Class'] or '?'}"
        value = values[column]
        value = None if value is None or value != value else float(value)  # NaN: no reading
        groups.setdefault(key, []).append((values["Node"], value, values["Status"]))
    width = max((len(v) for v in groups.values()), default=0)
    rows, z, text = [], [], []
    for key, cells in groups.items():
        rows.append(key)
        z.append([v for _, v, _ in cells] + [None] * (width - len(cells)))
        text.append([f"{n} ({s})" for n, _, s in cells] + [""] * (width - len(cells)))
    return Grid(rows, z, text)


def conditions(nodes: list[Obj]) -> pd.DataFrame:
    """Conditions that are not as a healthy node has them (not Ready, cordoned, draining,
    quarantined...), newest first."""
    rows = []
    for node in nodes:
        for cond in dig(node, "status.conditions") or []:
            ctype, cstatus = cond.get("type"), cond.get("status")
            if NOMINAL.get(str(ctype), "True") == cstatus:
                continue
            rows.append(
                {
                    "Node": dig(node, "metadata.name"),
                    "Condition": ctype,
                    "Status": cstatus,
                    "Reason": cond.get("reason") or "",
                    "Message": cond.get("message") or "",
                    "By": cond.get("actor") or "",
                    "Since": cond.get("lastTransitionTime") or "",
                }
            )
    columns = ["Node", "Condition", "Status", "Reason", "Message", "By", "Since"]
    out = pd.DataFrame(rows, columns=columns)
    return out.sort_values("Since", ascending=False).reset_index(drop=True)


def summary(nodes: pd.DataFrame) -> dict[str, Any]:
    status = nodes["Status"]
    return {
        "Nodes": len(nodes),
        "Ready": int(status.str.startswith("Ready").sum()),
        "Cordoned": int(status.str.contains("Cordoned").sum()),
        "Quarantined": int(status.str.contains("Quarantined").sum()),
        "Mean util": None if nodes.empty else _mean(nodes["Util %"].dropna().tolist()),
    }


def ready(node: Obj) -> bool:
    return (condition(node, "Ready") or {}).get("status") == "True"
