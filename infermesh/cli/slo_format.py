"""How an SLO reads on a terminal: its table cells and the sections of `mesh describe slo`.

Values only (None where there is nothing to say); printers.py lays them out, so this module
needs nothing from it.
"""

from __future__ import annotations

from typing import Any

from infermesh.humanize import format_duration

Obj = dict[str, Any]

SOURCE_ANNOTATION = "slo.infermesh.io/source"  # on implicit SLOs: the Endpoint or Job implying it


def _get(obj: Any, path: str) -> Any:
    for part in path.split("."):
        if not isinstance(obj, dict):
            return None
        obj = obj.get(part)
    return obj


def percent(ratio: Any, digits: int = 1) -> str | None:
    return None if ratio is None else f"{float(ratio) * 100:.{digits}f}%"


def target(obj: Obj) -> str | None:
    """`Endpoint/chat`, `Endpoint/chat:edge-eu` (one domain's traffic), `Job/ft-news`."""
    t = _get(obj, "spec.target") or {}
    if not t:
        return None
    domain = _get(obj, "spec.domain")
    return f"{t.get('kind')}/{t.get('name')}" + (f":{domain}" if domain else "")


def sli(obj: Obj) -> str | None:
    """`availability`, `latency<=300ms`, `throughput>=1200tps`."""
    spec = obj.get("spec") or {}
    kind = spec.get("sli")
    if spec.get("thresholdMs") is not None:
        return f"{kind}<={float(spec['thresholdMs']):g}ms"
    if spec.get("thresholdTps") is not None:
        return f"{kind}>={float(spec['thresholdTps']):g}tps"
    return kind


def objective(obj: Obj) -> str | None:
    value = _get(obj, "spec.objective")
    return None if value is None else f"{float(value):g}%"


def budget_left(obj: Obj) -> str | None:
    return percent(_get(obj, "status.budgetRemaining"))


def window_row(obj: Obj, window: str) -> Obj | None:
    for row in _get(obj, "status.windows") or []:
        if row.get("window") == window:
            return dict(row)
    return None


def burn(obj: Obj, window: str = "1h") -> str | None:
    row = window_row(obj, window)
    return None if row is None or row.get("burn") is None else f"{float(row['burn']):.2f}x"


def firing(obj: Obj) -> list[Obj]:
    return [a for a in _get(obj, "status.alerts") or [] if a.get("firing")]


def alerts(obj: Obj) -> str | None:
    """The firing rules, page first (`page-1h-5m,ticket-1d-2h`)."""
    names = [a.get("rule") for a in firing(obj)]
    return ",".join(str(n) for n in names) or None


def exhaustion(obj: Obj) -> str | None:
    """When the budget runs out at the last hour's burn: `2d4h`, `now`, `never`."""
    status = obj.get("status") or {}
    if "budgetRemaining" not in status:
        return None
    seconds = status.get("exhaustionSeconds")
    if seconds is None:
        return "never"
    return "now" if seconds <= 0 else format_duration(seconds)


def _sli_meaning(obj: Obj) -> str:
    spec = obj.get("spec") or {}
    kind = spec.get("sli")
    rate_limited = "429 bad" if spec.get("rateLimitedIsBad") else "429 not counted"
    if kind == "availability":
        return f"availability (bad: 5xx and timeouts; {rate_limited})"
    if kind in ("latency", "ttft"):
        what = "latency" if kind == "latency" else "time to first token"
        return (
            f"{kind} (good: succeeded with {what} <= {float(spec['thresholdMs']):g} ms; "
            f"bad: slower, 5xx and timeouts; {rate_limited})"
        )
    return str(sli(obj))


def summary(obj: Obj) -> list[tuple[str, Any]]:
    """The `describe` lines above the tables: objective, SLI, phase, budget."""
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    budget = status.get("errorBudget")
    goal = f"{objective(obj)} of valid events good over {spec.get('window')}"
    if budget is not None:
        goal += f" (error budget {percent(budget, 3)})"
    phase = status.get("phase")
    if phase and status.get("reason"):
        phase = f"{phase} ({status['reason']}): {status.get('message') or ''}".rstrip(": ")
    left = budget_left(obj)
    if left is not None:
        when = exhaustion(obj)
        left += {
            "never": " remaining; not burning",
            "now": " remaining; exhausted",
        }.get(str(when), f" remaining; exhausted in {when} at the 1h burn rate")
    source = (_get(obj, "metadata.annotations") or {}).get(SOURCE_ANNOTATION)
    return [
        ("Target", target(obj)),
        ("Objective", goal),
        ("SLI", _sli_meaning(obj)),
        *([("Implied by", source)] if source else []),
        ("Phase", phase),
        ("Budget", left),
        ("Evaluated", status.get("updated")),
    ]


def burn_rows(obj: Obj) -> list[list[Any]]:
    """The burn table, a header row first; empty before the first evaluation."""
    rows = _get(obj, "status.windows") or []
    if not rows:
        return []
    out: list[list[Any]] = [["WINDOW", "GOOD", "TOTAL", "RATIO", "BURN"]]
    for r in rows:
        ratio = r.get("ratio")
        out.append(
            [
                r.get("window"),
                _number(r.get("good")),
                _number(r.get("total")),
                None if ratio is None else f"{float(ratio) * 100:.3f}%",
                f"{float(r.get('burn') or 0):.2f}x",
            ]
        )
    return out


def alert_rows(obj: Obj) -> list[list[Any]]:
    """Every rule and its state, a header row first."""
    rows = _get(obj, "status.alerts") or []
    if not rows:
        return []
    out: list[list[Any]] = [["RULE", "SEVERITY", "WINDOWS", "FACTOR", "FIRING", "SINCE"]]
    for a in rows:
        out.append(
            [
                a.get("rule"),
                a.get("severity"),
                f"{a.get('longWindow')}&{a.get('shortWindow')}",
                f"{float(a.get('factor') or 0):g}x",
                "yes" if a.get("firing") else "no",
                a.get("since"),
            ]
        )
    return out


def percentile_rows(obj: Obj) -> list[list[Any]]:
    """Latency percentiles per window, a header row first."""
    table = _get(obj, "status.percentiles") or {}
    if not table:
        return []
    out: list[list[Any]] = [["WINDOW", "REQUESTS", "P50-MS", "P95-MS", "P99-MS", "TTFT-P95-MS"]]
    for window, p in table.items():
        out.append(
            [
                window,
                p.get("requests"),
                p.get("p50Ms"),
                p.get("p95Ms"),
                p.get("p99Ms"),
                p.get("ttftP95Ms"),
            ]
        )
    return out


def _number(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None if value is None else round(float(value), 1)
