"""Fault injection: what an operator (or a test) can make a simulator do wrong.

Per request, the `X-Return-Error: <status>` header (400..599) answers that status in OpenAI's
error shape without doing any work.

`POST /admin/faults` with a JSON object changes the standing faults; every field is optional:

- `error_rate` (number 0..1): that share of generation requests gets 500 (drawn from the
  seeded generator).
- `slow_factor` (number > 0): every engine step takes this many times longer (1 = normal).
- `thermal` (bool): true starts a thermal runaway (the temperature climbs, then the GPU
  throttles); false ends it.
- `ecc_dbe` (int >= 0, or true for 1): adds double-bit ECC errors to the GPU.
- `ecc_sbe` (int >= 0, or true for 1): adds single-bit ECC errors likewise.
- `crash` (true): the simulator dies right after answering. Run by `serve`, the process exits;
  in a fleet's shared process (`start`), the server drops its connections and stops instead, and
  the other simulators live on.

`DELETE /admin/faults` clears `error_rate`, `slow_factor` and `thermal`; ECC counters, like
NVML's, never go back. `GET /admin/faults` shows the standing faults and the ECC counts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class FaultError(ValueError):
    """Bad fault input: a 400 that names the field."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


@dataclass
class Faults:
    error_rate: float = 0.0
    slow_factor: float = 1.0
    thermal: bool = False


@dataclass(frozen=True)
class FaultPatch:
    error_rate: float | None = None
    slow_factor: float | None = None
    thermal: bool | None = None
    ecc_sbe: int = 0
    ecc_dbe: int = 0
    crash: bool = False

    def apply(self, faults: Faults) -> None:
        if self.error_rate is not None:
            faults.error_rate = self.error_rate
        if self.slow_factor is not None:
            faults.slow_factor = self.slow_factor
        if self.thermal is not None:
            faults.thermal = self.thermal


_FIELDS = ("error_rate", "slow_factor", "thermal", "ecc_sbe", "ecc_dbe", "crash")


def parse_patch(body: Any) -> FaultPatch:
    if not isinstance(body, dict):
        raise FaultError(f"the body must be a JSON object with any of: {', '.join(_FIELDS)}", "")
    unknown = sorted(set(body) - set(_FIELDS))
    if unknown:
        raise FaultError(
            f"unknown fault field(s) {', '.join(unknown)}; known: {', '.join(_FIELDS)}", unknown[0]
        )
    error_rate = _number(body, "error_rate")
    if error_rate is not None and not 0 <= error_rate <= 1:
        raise FaultError("error_rate must be between 0 and 1", "error_rate")
    slow_factor = _number(body, "slow_factor")
    if slow_factor is not None and slow_factor <= 0:
        raise FaultError("slow_factor must be greater than 0", "slow_factor")
    return FaultPatch(
        error_rate=error_rate,
        slow_factor=slow_factor,
        thermal=_bool(body, "thermal"),
        ecc_sbe=_count(body, "ecc_sbe"),
        ecc_dbe=_count(body, "ecc_dbe"),
        crash=bool(_bool(body, "crash")),
    )


def returned_error_status(header: str) -> int:
    """The status an `X-Return-Error` header asks for."""
    value = header.strip()
    if not value.isdigit() or not 400 <= int(value) <= 599:
        raise FaultError(
            f"X-Return-Error must be an HTTP error status (400-599), got {header!r}",
            "X-Return-Error",
        )
    return int(value)


def _number(body: dict[str, Any], name: str) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise FaultError(f"{name} must be a number", name)
    return float(value)


def _bool(body: dict[str, Any], name: str) -> bool | None:
    value = body.get(name)
    if value is not None and not isinstance(value, bool):
        raise FaultError(f"{name} must be true or false", name)
    return value


def _count(body: dict[str, Any], name: str) -> int:
    value = body.get(name)
    if value is None or value is False:
        return 0
    if value is True:
        return 1
    if not isinstance(value, int) or value < 0:
        raise FaultError(f"{name} must be a whole number >= 0 (or true for 1)", name)
    return value
