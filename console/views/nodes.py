"""Nodes: the operator's Node object merged with its agent's report (docs/architecture.md)."""

from __future__ import annotations

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from infermesh.cli import printers
from infermesh.console.views.base import (
    AGE,
    CRIT,
    DIM,
    NAME,
    NONE,
    OK,
    WARN,
    Cell,
    Column,
    Ctx,
    Obj,
    ViewSpec,
    dig,
    key_of,
    level,
    number,
    plain,
)

# Thresholds (warn, critical). Temperature: agents quarantine a GPU over 90 °C for 30 s.
UTIL = (80.0, 95.0)
VRAM = (85.0, 95.0)
TEMP = (80.0, 88.0)
POWER = (85.0, 95.0)  # percent of the power limit


def gpus(obj: Obj) -> list[Obj]:
    found = dig(obj, "status.gpus")
    return [g for g in found if isinstance(g, dict)] if isinstance(found, list) else []


def mean_util(obj: Obj) -> float | None:
    readings = [float(g["utilPct"]) for g in gpus(obj) if g.get("utilPct") is not None]
    return sum(readings) / len(readings) if readings else None


def _gpu_count(obj: Obj, ctx: Ctx) -> Cell:
    readings, facts = gpus(obj), dig(obj, "status.facts") or {}
    count = len(readings) or facts.get("gpuCount")
    name = facts.get("gpu") or (readings[0].get("name") if readings else None)
    return Cell(f"{count}x{name}" if count and name else NONE, "", (count or 0, name or ""))


def _util(obj: Obj, ctx: Ctx) -> Cell:
    return number(mean_util(obj), "{:.0f}%", *UTIL)


def _vram(obj: Obj, ctx: Ctx) -> Cell:
    readings = gpus(obj)
    total = sum(float(g.get("memTotalMiB") or 0) for g in readings)
    if not total:
        return Cell(NONE, DIM)
    used = sum(float(g.get("memUsedMiB") or 0) for g in readings)
    pct = 100 * used / total
    return Cell(f"{used / 1024:.0f}/{total / 1024:.0f}Gi", level(pct, *VRAM), pct)


def _temp(obj: Obj, ctx: Ctx) -> Cell:
    temps = [float(g["tempC"]) for g in gpus(obj) if g.get("tempC") is not None]
    return number(max(temps) if temps else None, "{:.0f}C", *TEMP)


def _power(obj: Obj, ctx: Ctx) -> Cell:
    readings = [g for g in gpus(obj) if g.get("powerW") is not None]
    if not readings:
        return Cell(NONE, DIM)
    watts = sum(float(g["powerW"]) for g in readings)
    limit = sum(float(g.get("powerLimitW") or 0) for g in readings)
    style = level(100 * watts / limit, *POWER) if limit else ""
    return Cell(f"{watts:.0f}W", style, watts)


def status_style(status: str) -> str:
    words = set(status.split(","))
    if words & {"Quarantined", "NotReady", "Unknown"}:
        return CRIT
    if words & {"Draining", "Drained", "Cordoned"}:
        return WARN
    return OK


def _status(obj: Obj, ctx: Ctx) -> Cell:
    status = printers.node_status(obj)
    return Cell(status, status_style(status))


def _in_flight(obj: Obj, ctx: Ctx) -> Cell:
    return plain(dig(obj, "status.inFlight"))


COLUMNS = (
    NAME,
    Column("domain", "DOMAIN", lambda o, c: plain(dig(o, "spec.domain")), "D"),
    Column("class", "CLASS", lambda o, c: plain(dig(o, "spec.nodeClassRef")), "C"),
    Column("gpus", "GPUS", _gpu_count),
    Column("util", "UTIL", _util, "G"),
    Column("vram", "VRAM", _vram, "V"),
    Column("temp", "TEMP", _temp, "T"),
    Column("power", "POWER", _power, "W"),
    Column("inflight", "IN-FLIGHT", _in_flight, "I"),
    Column("status", "STATUS", _status, "S"),
    AGE,
)


def gpu_style(gpu: Obj) -> str:
    """The worst threshold any of a GPU's readings crosses."""
    styles = [
        level(gpu.get("utilPct"), *UTIL),
        level(gpu.get("tempC"), *TEMP),
    ]
    total = float(gpu.get("memTotalMiB") or 0)
    if total:
        styles.append(level(100 * float(gpu.get("memUsedMiB") or 0) / total, *VRAM))
    for worst in (CRIT, WARN):
        if worst in styles:
            return worst
    return ""


def describe(obj: Obj, ctx: Ctx) -> RenderableType:
    """A node as an SRE reads it: facts, a gpustat-like line per GPU, the runtime, the
    conditions and the node's recent events."""
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    facts, runtime = status.get("facts") or {}, status.get("runtime") or {}
    head = Text.assemble(
        (str(dig(obj, "metadata.name")), "bold"),
        f"  {spec.get('nodeClassRef', NONE)}  {spec.get('domain') or NONE}",
        f"  {facts.get('region') or spec.get('region') or NONE}/"
        f"{facts.get('zone') or spec.get('zone') or NONE}",
        f"  {spec.get('address') or NONE}  ",
        (printers.node_status(obj), status_style(printers.node_status(obj))),
    )
    parts: list[RenderableType] = [head]
    for gpu in gpus(obj):
        parts.append(Text(printers.gpu_line(gpu), style=gpu_style(gpu)))
    if runtime:
        kv = runtime.get("kvCacheUsage")
        parts.append(
            Text(
                f"runtime {runtime.get('kind')} {runtime.get('url')} "
                f"{'healthy' if runtime.get('healthy') else 'UNHEALTHY'} | "
                f"models {','.join(runtime.get('models') or []) or NONE} | "
                f"running {runtime.get('running', 0)} waiting {runtime.get('waiting', 0)} | "
                f"kv {NONE if kv is None else f'{100 * float(kv):.0f}%'} | "
                f"ttft p50 {_ms(runtime.get('ttftP50Ms'))} | in-flight {status.get('inFlight', 0)}",
                style="" if runtime.get("healthy") else CRIT,
            )
        )
    reason = dig(obj, "spec.quarantine.reason") or dig(obj, "spec.drain.reason")
    if reason:
        parts.append(Text(f"reason: {reason}", style=WARN))
    if ctx.state is not None:
        events = ctx.state.events_about("Node", key_of(obj))
        if events:
            table = Table.grid(padding=(0, 1))
            for e in events:
                table.add_row(
                    printers.age(e.get("time"), ctx.now),
                    Text(str(e.get("type")), style=WARN if e.get("type") == "Warning" else ""),
                    str(e.get("reason")),
                    str(e.get("message")),
                )
            parts += [Text("events", style="bold"), table]
    return Group(*parts)


def _ms(value: object) -> str:
    return NONE if value is None else f"{float(value):.0f}ms"  # type: ignore[arg-type]


VIEW = ViewSpec(
    name="nodes",
    title="Nodes",
    kind="nodes",
    aliases=("no", "node"),
    columns=COLUMNS,
    describe=describe,
    event_kind="Node",
)
