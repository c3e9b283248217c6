"""Training jobs: the scheduler's status fields, as `mesh get jobs` shows them."""

from __future__ import annotations

from rich.console import Group, RenderableType
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
    Render,
    ViewSpec,
    dig,
    parse_time,
    plain,
)

PHASE_STYLE = {
    "Running": OK,
    "Succeeded": DIM,
    "Pending": WARN,
    "Queued": WARN,
    "Paused": WARN,
    "Recovering": WARN,
    "Failed": CRIT,
}
_CLI = {c.header: c.value for c in printers.COLUMNS["Job"]}  # the CLI's cells, reused


def _phase(obj: Obj, ctx: Ctx) -> Cell:
    phase = str(dig(obj, "status.phase") or "Pending")
    if dig(obj, "spec.paused") and phase != "Paused":
        phase += "(pausing)"
    return Cell(phase, PHASE_STYLE.get(phase.partition("(")[0], ""))


def gpu_range(obj: Obj) -> tuple[int, int]:
    """(min, max) GPUs: the elastic range, else dp*tp*pp both."""
    elastic = dig(obj, "spec.elastic") or {}
    par = dig(obj, "spec.parallelism") or {}
    fixed = int(par.get("dp", 1)) * int(par.get("tp", 1)) * int(par.get("pp", 1))
    return int(elastic.get("min_gpus") or fixed), int(elastic.get("max_gpus") or fixed)


def _gpus(obj: Obj, ctx: Ctx) -> Cell:
    """`4 [4-8]`: GPUs held now and the elastic range; `4->8 [4-8]` while a scale is pending."""
    current = int(dig(obj, "status.gpus") or 0)
    low, high = gpu_range(obj)
    target = dig(obj, "spec.targetGpus")
    head = f"{current}->{target}" if target is not None and target != current else str(current)
    span = f"[{low}-{high}]" if low != high else f"[{low}]"
    style = WARN if current < low and dig(obj, "status.phase") == "Running" else ""
    return Cell(f"{head} {span}", style, current)


def _cli(header: str, sort_path: str | None = None) -> Render:
    value = _CLI[header]

    def cell(obj: Obj, ctx: Ctx) -> Cell:
        return plain(value(obj), dig(obj, sort_path) if sort_path else None)

    return cell


def _last_checkpoint(obj: Obj, ctx: Ctx) -> Cell:
    """`1500 (3m)`: the step of the last checkpoint and how long ago (the console's clock)."""
    ckpt = dig(obj, "status.lastCheckpoint")
    if not isinstance(ckpt, dict) or not ckpt:
        return Cell(NONE, DIM)
    then = parse_time(ckpt.get("time"))
    ago = f" ({printers.age(ckpt.get('time'), ctx.now)})" if then else ""
    return Cell(f"{ckpt.get('step')}{ago}", "", ckpt.get("step"))


def _gpu_hours(obj: Obj, ctx: Ctx) -> Cell:
    used, quota = dig(obj, "status.gpuHours"), dig(obj, "status.quotaGpuHours")
    text = printers.text(_CLI["GPU-HOURS"](obj))
    if used is None or not quota:
        return Cell(text, "", used)
    share = 100 * float(used) / float(quota)
    style = CRIT if share >= 100 else WARN if share >= 80 else ""
    return Cell(text, style, float(used))


def _restarts(obj: Obj, ctx: Ctx) -> Cell:
    n = int(dig(obj, "status.restarts") or 0)
    return Cell(str(n), WARN if n else "", n)


COLUMNS = (
    NAME,
    Column("phase", "PHASE", _phase, "S"),
    Column("gpus", "GPUS", _gpus, "G"),
    Column("step", "STEP", _cli("STEP", "status.step"), "E"),
    Column("steptime", "STEP-P95", _cli("STEP-P95", "status.stepTimeP95Ms"), "T"),
    Column("ckpt", "LAST-CKPT", _last_checkpoint, "K", clock=True),
    Column("gpuhours", "GPU-HOURS", _gpu_hours, "H"),
    Column("restarts", "RESTARTS", _restarts),
    AGE,
)


def describe(obj: Obj, ctx: Ctx) -> RenderableType:
    status = obj.get("status") or {}
    lines = [
        Text.assemble(
            (str(dig(obj, "metadata.name")), "bold"),
            "  ",
            _phase(obj, ctx),
            f"  {status.get('reason') or ''} {status.get('message') or ''}".rstrip(),
        ),
        Text(
            f"gpus {_gpus(obj, ctx).plain}  dp {status.get('dp', NONE)}  attempt "
            f"{status.get('attempt', NONE)}  pool {status.get('pool') or NONE}  cost "
            f"{printers.text(_CLI['COST'](obj))}  "
            f"throughput {status.get('throughputTps', NONE)} tps"
        ),
        Text(
            f"nodes {printers.text(_CLI['NODES'](obj))}  "
            f"topology {printers.text(_CLI['TOPOLOGY'](obj))}"
        ),
        Text(
            f"restarts {status.get('restarts', 0)}  preemptions {status.get('preemptions', 0)}"
            f"  recoveries {status.get('recoveries', 0)}  steps lost {status.get('stepsLost', 0)}"
        ),
    ]
    for cond in status.get("conditions") or []:
        lines.append(
            Text(
                f"{cond.get('type')}={cond.get('status')} {cond.get('reason') or ''}: "
                f"{cond.get('message') or ''}",
                style=DIM,
            )
        )
    return Group(*lines)


VIEW = ViewSpec(
    name="jobs",
    title="Jobs",
    kind="jobs",
    aliases=("job",),
    columns=COLUMNS,
    describe=describe,
    event_kind="Job",
)
