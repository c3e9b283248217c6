"""How objects look on a terminal: kind-specific table columns, ages, JSON/YAML, describe.

Tables are rich tables on a terminal and plain aligned columns otherwise, so pipes and tests get
text that splits on whitespace (a missing value prints as `<none>`, never as blanks).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import click
import yaml
from rich import box
from rich.console import Console
from rich.table import Table

from infermesh.cli import slo_format

NONE = "<none>"
Obj = dict[str, Any]


def dig(obj: Any, path: str) -> Any:
    """`obj["a"]["b"]` for "a.b", None where anything on the way is missing."""
    for part in path.split("."):
        if not isinstance(obj, dict):
            return None
        obj = obj.get(part)
    return obj


def text(value: Any) -> str:
    if value is None or value == "" or value == [] or value == {}:
        return NONE
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # pydantic floats: 20000.0 reads better as 20000
    if isinstance(value, list):
        return ",".join(text(v) for v in value)
    if isinstance(value, dict):
        return ",".join(f"{k}={text(v)}" for k, v in value.items())
    return str(value)


def parse_time(stamp: str | None) -> datetime | None:
    if not stamp:
        return None
    try:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return None


def age(stamp: str | None, now: datetime | None = None) -> str:
    """kubectl-style age: 42s, 5m, 3h, 2d."""
    then = parse_time(stamp)
    if then is None:
        return NONE
    seconds = max(0, int(((now or datetime.now(UTC)) - then).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size * (2 if unit != "m" else 1):
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def condition(obj: Obj, type_: str) -> Obj | None:
    for cond in dig(obj, "status.conditions") or []:
        if cond.get("type") == type_:
            return cond
    return None


# --- columns ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    header: str
    value: Callable[[Obj], Any]
    wide: bool = False  # only with -o wide


def field(header: str, path: str, *, wide: bool = False) -> Column:
    return Column(header, lambda o: dig(o, path), wide)


def _refs(obj: Obj) -> str:
    cond = condition(obj, "ResolvedRefs")
    if cond is None:
        return NONE
    if cond.get("status") == "True":
        return "Resolved"
    return cond.get("reason") or "Unresolved"


def _domains(obj: Obj) -> str:
    doms = dig(obj, "spec.domains") or []
    return (
        ",".join(
            f"{d.get('name')}={d['weight']}" if d.get("weight") is not None else str(d.get("name"))
            for d in doms
        )
        or NONE
    )


def _job_gpus(obj: Obj) -> str:
    """GPUs in use / wanted (the scale target, else dp*tp*pp)."""
    par = dig(obj, "spec.parallelism") or {}
    wanted = dig(obj, "spec.targetGpus") or (par.get("dp", 1) * par.get("tp", 1) * par.get("pp", 1))
    return f"{dig(obj, 'status.gpus') or 0}/{wanted}"


def _step(obj: Obj) -> str:
    step, total = dig(obj, "status.step"), dig(obj, "status.totalSteps")
    if step is None:
        return NONE
    return f"{step}/{total}" if total is not None else str(step)


def _step_p95(obj: Obj) -> str:
    ms = dig(obj, "status.stepTimeP95Ms")
    return NONE if ms is None else f"{float(ms):.0f}ms"


def _last_checkpoint(obj: Obj) -> str:
    """`1500(3m)`: the step of the last checkpoint and how long ago it was written."""
    ckpt = dig(obj, "status.lastCheckpoint")
    if not ckpt:
        return NONE
    return f"{ckpt.get('step')}({age(ckpt.get('time'))})"


def _quantity(x: float) -> str:
    """Two decimals at most, trailing zeros dropped: 0.05, 1.2, 100."""
    return f"{x:.2f}".rstrip("0").rstrip(".") if x < 100 else f"{x:.0f}"


def _gpu_hours(obj: Obj) -> str:
    """GPU-hours used, over the pool's quota when it has one: `1.2/100`."""
    used = _quantity(float(dig(obj, "status.gpuHours") or 0))
    quota = dig(obj, "status.quotaGpuHours")
    return used if quota is None else f"{used}/{_quantity(float(quota))}"


def _job_nodes(obj: Obj) -> str:
    """`gpu-1:8,gpu-2:8`: the GPUs the job holds per node (other projects' nodes in full)."""
    nodes = dig(obj, "status.nodes") or {}
    mine = f"{dig(obj, 'metadata.project')}/"
    return ",".join(f"{node.removeprefix(mine)}:{n}" for node, n in nodes.items()) or NONE


def _topology(obj: Obj) -> str:
    topo = dig(obj, "status.topology")
    if not topo:
        return NONE
    return str(topo.get("algorithm")) + ("+compression" if topo.get("compression") else "")


def _cost(obj: Obj) -> str:
    usd = dig(obj, "status.costUSD")
    return NONE if usd is None else f"${float(usd):.2f}"


def node_status(obj: Obj) -> str:
    """Readiness, then what operators did to the node (kubectl's `Ready,SchedulingDisabled`)."""
    spec = obj.get("spec") or {}
    words = []
    if spec.get("quarantine"):
        words.append("Quarantined")
    if spec.get("drain"):
        drained = (condition(obj, "Drained") or {}).get("status") == "True"
        words.append("Drained" if drained else "Draining")
    if spec.get("cordoned"):
        words.append("Cordoned")
    ready = (condition(obj, "Ready") or {}).get("status")
    base = {"True": "Ready", "False": "NotReady"}.get(ready or "", "Unknown")
    return ",".join([base, *words])


def _gpu_readings(obj: Obj) -> list[Obj]:
    gpus = dig(obj, "status.gpus")  # a node's readings (a job's is how many it holds)
    return [g for g in gpus if isinstance(g, dict)] if isinstance(gpus, list) else []


def _gpu_count(obj: Obj) -> str:
    gpus, facts = _gpu_readings(obj), dig(obj, "status.facts") or {}
    count = len(gpus) or facts.get("gpuCount")
    name = facts.get("gpu") or (gpus[0].get("name") if gpus else None)
    return f"{count}x{name}" if count and name else NONE


def _util(obj: Obj) -> str:
    gpus = _gpu_readings(obj)
    if not gpus:
        return NONE
    return f"{sum(float(g.get('utilPct') or 0) for g in gpus) / len(gpus):.0f}%"


def _vram(obj: Obj) -> str:
    gpus = _gpu_readings(obj)
    total = sum(float(g.get("memTotalMiB") or 0) for g in gpus)
    if not total:
        return NONE
    used = sum(float(g.get("memUsedMiB") or 0) for g in gpus)
    return f"{used / 1024:.0f}/{total / 1024:.0f}Gi"


def _temp(obj: Obj) -> str:
    temps = [float(g["tempC"]) for g in _gpu_readings(obj) if g.get("tempC") is not None]
    return f"{max(temps):.0f}C" if temps else NONE


def _power(obj: Obj) -> str:
    watts = [float(g["powerW"]) for g in _gpu_readings(obj) if g.get("powerW") is not None]
    return f"{sum(watts):.0f}W" if watts else NONE


def gpu_line(gpu: Obj) -> str:
    """`[0] H100-80G | 41°C, 63 % | 51234 / 81559 MiB | 402 / 700 W | ECC 0/0 | GPU-…`"""
    ecc = f"ECC {gpu.get('eccVolatileSbe', 0)}/{gpu.get('eccVolatileDbe', 0)}"
    throttle = ",".join(gpu.get("throttleReasons") or [])
    parts = [
        f"[{gpu.get('index', '?')}] {gpu.get('name') or ''}".rstrip(),
        f"{_num(gpu.get('tempC'))}°C, {_num(gpu.get('utilPct'))} %",
        f"{_num(gpu.get('memUsedMiB'))} / {_num(gpu.get('memTotalMiB'))} MiB",
        f"{_num(gpu.get('powerW'))} / {_num(gpu.get('powerLimitW'))} W",
        ecc,
        *([f"throttle {throttle}"] if throttle else []),
        *([f"MIG {gpu['migProfile']}"] if gpu.get("migProfile") else []),
        str(gpu.get("uuid") or ""),
    ]
    return " | ".join(p for p in parts if p)


def _num(value: Any) -> str:
    return "?" if value is None else f"{float(value):.0f}"


def _node_reason(obj: Obj) -> str | None:
    return dig(obj, "spec.quarantine.reason") or dig(obj, "spec.drain.reason")


def _artifacts(obj: Obj) -> str:
    return ",".join(f"{a.get('type')}:{a.get('uri')}" for a in dig(obj, "spec.artifacts") or [])


def rollout_summary(status: Any) -> str:
    """`25% 2/4 Progressing`: an Endpoint's `status.rollout` in one cell (store/delivery)."""
    if not isinstance(status, dict) or not status:
        return "-"
    steps, step, weight = status.get("steps") or [], status.get("step"), status.get("weight")
    where = f" {step + 1}/{len(steps)}" if steps and isinstance(step, int) else ""
    head = f"{weight}%" if weight is not None else ""
    return f"{head}{where} {status.get('phase') or ''}".strip() or "-"


def _traffic_split(obj: Obj) -> str:
    split = dig(obj, "spec.trafficSplit") or []
    return ",".join(f"{e.get('modelRef')}={e.get('weight')}" for e in split) or NONE


def _pins(obj: Obj) -> str:
    pins = dig(obj, "spec.pins") or []
    return (
        ",".join(
            f"node:{p['node']}" if p.get("node") else f"domain:{p.get('domain')}" for p in pins
        )
        or NONE
    )


def _targets(obj: Obj) -> str:
    """`Endpoint/chat-pro`, `Node[tier=gold]`; no targets means the whole project."""
    targets = dig(obj, "spec.appliesTo") or []
    return (
        ",".join(
            f"{t.get('kind')}/{t['name']}"
            if t.get("name")
            else f"{t.get('kind')}[{text(t.get('matchLabels'))}]"
            for t in targets
        )
        or "project"
    )


def _policy_sections(obj: Obj) -> str:
    """Which behaviours the policy sets (placement, rollout, ...)."""
    spec = obj.get("spec") or {}
    return ",".join(k for k, v in spec.items() if k != "appliesTo" and v) or NONE


def _age(obj: Obj) -> str:
    return age(dig(obj, "metadata.creationTimestamp"))


COLUMNS: dict[str, list[Column]] = {
    "Domain": [
        field("REGION", "spec.residency.region"),
        field("CELLS", "spec.scope.cells"),
        field("RTT-BUDGET-MS", "spec.netPolicy.rttBudgetMs"),
        field("LINK-CLASSES", "spec.netPolicy.allowLinkClasses", wide=True),
        field("PRIVACY", "spec.residency.privacy", wide=True),
    ],
    "NodeClass": [
        field("GPU", "spec.hardware.gpu"),
        field("GPUS", "spec.hardware.gpuCount"),
        field("VRAM-GB", "spec.hardware.vramGB"),
        field("ENV", "spec.environment.kind"),
        field("REGION", "spec.environment.region"),
        field("MIG", "spec.hardware.mig", wide=True),
        field("NVLINK", "spec.hardware.nvlink", wide=True),
        field("PROVIDER", "spec.environment.provider", wide=True),
        field("SPOT", "spec.constraints.spot", wide=True),
    ],
    "CapacityPool": [
        field("SLO-CLASS", "spec.sloClass"),
        field("QUOTA-GPU-H", "spec.quotaGpuHours"),
        field("BUDGET-USD", "spec.budgetUSD"),
        field("MAX-GPUS", "spec.maxGpus", wide=True),
        field("NODE-CLASSES", "spec.nodeClasses", wide=True),
        field("DOMAINS", "spec.domains", wide=True),
    ],
    "Model": [
        field("REVISION", "spec.revision"),
        field("QUANT", "spec.quant"),
        field("RUNTIME", "spec.runtime.name"),
        field("VRAM-GB", "spec.vramGB"),
        field("PUBLISHED", "spec.published"),
        field("CONTEXT", "spec.contextLength", wide=True),
        Column("ARTIFACTS", _artifacts, wide=True),
    ],
    "Endpoint": [
        field("MODEL", "spec.modelRef"),
        Column("DOMAINS", _domains),
        field("STRATEGY", "spec.strategy.ref"),
        Column("REFS", _refs),
        field("POOL", "spec.capacityPoolRef", wide=True),
        field("SLO", "spec.slo", wide=True),
        Column("SPLIT", _traffic_split, wide=True),
        Column("ROLLOUT", lambda o: rollout_summary(dig(o, "status.rollout"))),
        Column("DEGRADED", lambda o: ",".join(dig(o, "status.degrade.actions") or []) or "-"),
        Column("PINS", _pins, wide=True),
        field("GEN", "metadata.generation", wide=True),
    ],
    "Job": [
        field("PHASE", "status.phase"),
        Column("GPUS", _job_gpus),
        Column("STEP", _step),
        Column("STEP-P95", _step_p95),
        Column("LAST-CKPT", _last_checkpoint),
        Column("GPU-HOURS", _gpu_hours),
        Column("RESTARTS", lambda o: dig(o, "status.restarts") or 0),
        Column("NODES", _job_nodes, wide=True),
        Column("TOPOLOGY", _topology, wide=True),
        Column(
            "POOL", lambda o: dig(o, "status.pool") or dig(o, "spec.capacityPoolRef"), wide=True
        ),
        Column("COST", _cost, wide=True),
    ],
    "Policy": [
        Column("APPLIES-TO", _targets),
        Column("SETS", _policy_sections),
        field("PRIORITY-CLASS", "spec.priority.className", wide=True),
        field("STRATEGY", "spec.strategy.ref", wide=True),
    ],
    "Strategy": [
        field("TYPE", "spec.kind"),
        field("PLUGIN", "spec.plugin"),
        field("ENTRY-POINT", "spec.entryPoint", wide=True),
        field("PARAMS", "spec.params", wide=True),
    ],
    "Node": [
        field("DOMAIN", "spec.domain"),
        field("CLASS", "spec.nodeClassRef"),
        Column("GPUS", _gpu_count),
        Column("UTIL", _util),
        Column("VRAM", _vram),
        Column("TEMP", _temp),
        Column("POWER", _power, wide=True),
        field("IN-FLIGHT", "status.inFlight"),
        Column("STATUS", node_status),
        field("ADDRESS", "spec.address", wide=True),
        Column("REASON", _node_reason, wide=True),
    ],
    "Project": [
        field("TENANT", "spec.tenant"),
        field("ORGANIZATION", "spec.organization"),
    ],
    "SLO": [
        Column("TARGET", slo_format.target),
        Column("SLI", slo_format.sli),
        Column("OBJECTIVE", slo_format.objective),
        field("WINDOW", "spec.window"),
        Column("BUDGET-LEFT", slo_format.budget_left),
        Column("BURN-1H", slo_format.burn),
        Column("ALERTS", slo_format.alerts),
        field("STATUS", "status.phase"),
        Column("EXHAUSTION", slo_format.exhaustion, wide=True),
        field("IMPLICIT", "status.implicit", wide=True),
    ],
}


def columns_for(kind: str, *, wide: bool, all_projects: bool) -> list[Column]:
    cols = [field("NAME", "metadata.name")]
    if all_projects:
        cols.append(field("PROJECT", "metadata.project"))
    cols += [c for c in COLUMNS.get(kind, []) if wide or not c.wide]
    cols.append(Column("AGE", _age))
    return cols


def rows_for(items: Sequence[Obj], cols: Sequence[Column]) -> list[list[str]]:
    return [[text(c.value(obj)) for c in cols] for obj in items]


# --- output ----------------------------------------------------------------------------------


def console() -> Console:
    """A console on the current stdout (click's test runner swaps it per invocation)."""
    return Console(highlight=False, soft_wrap=False)


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    out = console()
    if out.is_terminal:
        table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, header_style="bold")
        for h in headers:
            table.add_column(h, no_wrap=True)
        for row in rows:
            table.add_row(*row)
        # Like kubectl, never squeeze or fold cells: a wide table runs past the terminal's edge.
        widths = column_widths([list(headers), *rows])
        out.width = max(out.width, sum(widths) + 3 * len(widths))
        out.print(table)
        return
    for line in aligned([list(headers), *rows]):
        click.echo(line)


def aligned(rows: Sequence[Sequence[str]], widths: Sequence[int] | None = None) -> list[str]:
    """Rows as text columns three spaces apart (kubectl's layout)."""
    widths = widths or column_widths(rows)
    return [
        "   ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)).rstrip() for row in rows
    ]


def column_widths(rows: Sequence[Sequence[str]]) -> list[int]:
    return [max(len(c) for c in col) for col in zip(*rows, strict=False)] if rows else []


def print_objects(items: list[Obj], fmt: str, *, single: bool) -> None:
    """`-o json|yaml`: the object itself for one, a List for many."""
    doc: Any = items[0] if single else {"apiVersion": "v1", "kind": "List", "items": items}
    if fmt == "json":
        click.echo(json.dumps(doc, indent=2))
    else:
        click.echo(to_yaml(doc), nl=False)


def print_watch_event(type_: str, obj: Obj, fmt: str) -> None:
    """One watch event per JSON line, or one YAML document each."""
    doc = {"type": type_, "object": obj}
    if fmt == "json":
        click.echo(json.dumps(doc, separators=(",", ":")))
    else:
        click.echo("---\n" + to_yaml(doc), nl=False)


def to_yaml(doc: Any) -> str:
    return yaml.safe_dump(doc, sort_keys=False, default_flow_style=False, allow_unicode=True)


def print_describe(obj: Obj, events: list[Obj]) -> None:
    """kubectl-describe-like view: metadata, spec as YAML, conditions, recent events."""
    meta = obj.get("metadata") or {}
    created = meta.get("creationTimestamp")
    updated = meta.get("updateTimestamp")
    pairs = [
        ("Name", meta.get("name")),
        ("Kind", obj.get("kind")),
        ("Project", meta.get("project")),
        ("Labels", meta.get("labels")),
        ("Annotations", meta.get("annotations")),
        ("UID", meta.get("uid")),
        ("Resource Version", meta.get("resourceVersion")),
        ("Generation", meta.get("generation")),
        ("Created", f"{created} ({age(created)} ago)" if created else None),
        ("Updated", f"{updated} ({age(updated)} ago)" if updated else None),
    ]
    for key, value in pairs:
        click.echo(f"{key + ':':<18}{text(value)}")
    click.echo("Spec:")
    click.echo(_indent(to_yaml(obj.get("spec") or {})))
    gpus = _gpu_readings(obj)
    if gpus:  # one gpustat-like line per GPU reads faster than their YAML
        click.echo("GPUs:")
        click.echo(_indent("\n".join(gpu_line(g) for g in gpus)))
    hidden = {"conditions", "gpus"} if gpus else {"conditions"}
    status = {k: v for k, v in (obj.get("status") or {}).items() if k not in hidden}
    if obj.get("kind") == "SLO":
        _describe_slo(obj)
    elif status:
        click.echo("Status:")
        click.echo(_indent(to_yaml(status)))
    conds = dig(obj, "status.conditions") or []
    click.echo("Conditions:" + ("" if conds else f"  {NONE}"))
    if conds:
        rows = [["TYPE", "STATUS", "REASON", "AGE", "MESSAGE"]]
        rows += [
            [
                text(c.get("type")),
                text(c.get("status")),
                text(c.get("reason")),
                age(c.get("lastTransitionTime")),
                text(c.get("message")),
            ]
            for c in conds
        ]
        click.echo(_indent("\n".join(aligned(rows))))
    click.echo("Events:" + ("" if events else f"  {NONE}"))
    if events:  # oldest first, as kubectl describe shows them
        rows = [["AGE", "TYPE", "REASON", "ACTOR", "MESSAGE"]]
        rows += [
            [
                age(e.get("time")),
                text(e.get("type")),
                text(e.get("reason")),
                text(e.get("actor")),
                text(e.get("message")),
            ]
            for e in reversed(events)
        ]
        click.echo(_indent("\n".join(aligned(rows))))


def _describe_slo(obj: Obj) -> None:
    """An SLO's evaluation as an SRE reads it: objective, budget, the burn table, the alerts."""
    for key, value in slo_format.summary(obj):
        click.echo(f"{key + ':':<18}{text(value)}")
    for title, rows in (
        ("Burn rates", slo_format.burn_rows(obj)),
        ("Alerts", slo_format.alert_rows(obj)),
        ("Percentiles", slo_format.percentile_rows(obj)),
    ):
        click.echo(f"{title}:" + ("" if rows else f"  {NONE}"))
        if rows:
            cells = [[text(c) for c in row] for row in rows]
            click.echo(_indent("\n".join(aligned(cells))))


def _indent(block: str, prefix: str = "  ") -> str:
    return "\n".join(prefix + line for line in block.rstrip("\n").splitlines())


def event_row(event: Obj) -> list[str]:
    """One row under EVENT_HEADERS."""
    ref = f"{str(event.get('kind', '')).lower()}/{event.get('name', '')}"
    return [
        text(event.get("time")),
        text(event.get("type")),
        text(event.get("reason")),
        ref,
        text(event.get("message")),
    ]


EVENT_HEADERS = ["TIME", "TYPE", "REASON", "OBJECT", "MESSAGE"]
