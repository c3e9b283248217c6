"""SLOs: error budgets, burn rates and multi-window burn-rate alerts (docs/slo.md).

One concept per module, pure except the evaluator:

| module | what it is |
|---|---|
| `windows.py` | the alerting windows (5m .. 3d) and SLO windows (28d, 30d) |
| `counts.py` | `Counts` of a slice of traffic over a window; good/valid events per SLI |
| `burn.py` | `evaluate(counts_by_window, SliSpec) -> BurnTable`: ratio, burn, budget left |
| `alerts.py` | the workbook's page and ticket rules; `step_alerts` (the alert state machine) |
| `definitions.py` | which SLOs exist: SLO objects, and those Endpoints' and Jobs' spec.slo imply |
| `reader.py` | counts per window and slice from the series store, one read per project |
| `status.py` | `decide`: one SLO's status document, alert states and events |
| `evaluator.py` | `SloEvaluator`: the leader-elected loop in the API that writes SLO status |
"""

from infermesh.store.slo.alerts import RULES, AlertRule, AlertState, Transition, step_alerts
from infermesh.store.slo.burn import BurnTable, SliSpec, WindowBurn, evaluate
from infermesh.store.slo.counts import Counts, good_total, percentiles
from infermesh.store.slo.definitions import SloDefinition, definitions, implicit_objects
from infermesh.store.slo.reader import WindowCounts, read_window_counts, select

__all__ = [
    "RULES",
    "AlertRule",
    "AlertState",
    "BurnTable",
    "Counts",
    "SliSpec",
    "SloDefinition",
    "Transition",
    "WindowBurn",
    "WindowCounts",
    "definitions",
    "evaluate",
    "good_total",
    "implicit_objects",
    "percentiles",
    "read_window_counts",
    "select",
    "step_alerts",
]
