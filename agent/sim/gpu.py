"""The simulator's GPU: utilisation, VRAM, power and temperature that follow the engine's load.

Time is simulated seconds (wall seconds / time_scale). The engine reports each step (how long
the GPU was busy and with how large a batch); readings between steps treat the gap as idle.

- utilisation: NVML's meaning, the share of time a kernel ran (smoothed over ~1 s), so one
  request already shows near 100 %.
- power and temperature follow the load *intensity*: busy share x (0.5 + 0.5 x batch fill, full
  at 32 sequences); temperature lags with a ~20 s time constant.
- VRAM used: weights + the KV blocks held by sequences (vLLM preallocates its pool, but the mesh
  wants to see memory follow load, so the simulator reports what is in use).
- faults: a thermal runaway makes the temperature climb ~3 °C/s regardless of load, up to 110 °C;
  above 87 °C the GPU throttles (hw_thermal_slowdown) and the engine runs 1.5x slower. ECC
  error counters only ever grow, as NVML's volatile counters do until a driver reload.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from infermesh.agent.sim.profiles import GIB, GpuProfile

SLOWDOWN_TEMP_C = 87.0
RUNAWAY_C_PER_S = 3.0
RUNAWAY_MAX_C = 110.0
THROTTLE_SLOWDOWN = 1.5
_UTIL_TAU_S = 1.0
_THERMAL_TAU_S = 20.0
_FULL_BATCH = 32


@dataclass(frozen=True)
class GpuReading:
    uuid: str
    name: str
    utilization_pct: float
    memory_used_bytes: int
    memory_total_bytes: int
    temperature_c: float
    power_w: float
    power_limit_w: float
    ecc_volatile_sbe: int
    ecc_volatile_dbe: int
    thermal_throttle: bool


class SimulatedGpu:
    def __init__(
        self,
        profile: GpuProfile,
        *,
        uuid: str,
        weights_bytes: int,
        kv_bytes_per_token: int,
        now: float,
    ) -> None:
        self.profile = profile
        self.uuid = uuid
        self.weights_bytes = weights_bytes
        self.kv_bytes_per_token = kv_bytes_per_token
        self.thermal_runaway = False
        self.ecc_sbe = 0
        self.ecc_dbe = 0
        self._kv_bytes = 0
        self._last = now
        self._util = 0.0
        self._intensity = 0.0
        self._temp = profile.idle_temp_c

    @property
    def throttled(self) -> bool:
        return self._temp >= SLOWDOWN_TEMP_C

    @property
    def slowdown(self) -> float:
        """Factor on step times: clocks drop while thermally throttled."""
        return THROTTLE_SLOWDOWN if self.throttled else 1.0

    def advance(self, now: float, *, busy_s: float, batch: int, kv_tokens: int) -> None:
        """Account for the time since the last call, of which `busy_s` ran a `batch`;
        `kv_tokens` of KV cache are held now."""
        self._kv_bytes = kv_tokens * self.kv_bytes_per_token
        dt = now - self._last
        if dt <= 0:
            return
        self._last = now
        busy = min(1.0, busy_s / dt)
        intensity = busy * (0.5 + 0.5 * min(1.0, batch / _FULL_BATCH))
        fast = 1 - math.exp(-dt / _UTIL_TAU_S)
        self._util += (busy - self._util) * fast
        self._intensity += (intensity - self._intensity) * fast
        if self.thermal_runaway:
            self._temp = min(RUNAWAY_MAX_C, self._temp + RUNAWAY_C_PER_S * dt)
        else:
            p = self.profile
            target = p.idle_temp_c + (p.load_temp_c - p.idle_temp_c) * self._intensity
            self._temp += (target - self._temp) * (1 - math.exp(-dt / _THERMAL_TAU_S))

    def reading(self) -> GpuReading:
        p = self.profile
        return GpuReading(
            uuid=self.uuid,
            name=p.gpu_name,
            utilization_pct=round(100 * self._util, 1),
            memory_used_bytes=self.weights_bytes + self._kv_bytes,
            memory_total_bytes=int(p.vram_gib * GIB),
            temperature_c=round(self._temp, 1),
            power_w=round(p.idle_power_w + (p.power_limit_w - p.idle_power_w) * self._intensity, 1),
            power_limit_w=p.power_limit_w,
            ecc_volatile_sbe=self.ecc_sbe,
            ecc_volatile_dbe=self.ecc_dbe,
            thermal_throttle=self.throttled,
        )
