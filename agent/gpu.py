"""GPU telemetry: real GPUs through NVML (`pynvml` from nvidia-ml-py) or simulated ones.

`open_nvml("nvml" | "simulated" | "auto", ...)` picks the source; "auto" uses NVML when a driver
answers and falls back to the simulation (with a log line) when none does, which is the normal
case on our machines. Both give `GpuReading`s, one per physical GPU.

The simulated GPU follows the runtime's load: utilisation from the running batch, VRAM as model
weights plus the KV cache's share, temperature with thermal inertia (a first-order lag towards a
target set by the load) and power between idle and TDP, with the runtime simulator's GPU
profiles (H100, A100, L4). Where the runtime simulator exports its own GPU (`infermesh_sim_gpu_*`,
faults included), that reading is used as is.
"""

from __future__ import annotations

import asyncio
import logging
import math
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Literal, Protocol, TypeVar

import pynvml

from infermesh.agent.report import GpuReading
from infermesh.agent.sim.profiles import (
    DEFAULT_GPU_MEMORY_UTILIZATION,
    DEFAULT_WEIGHTS_GIB,
    PROFILES,
    GpuProfile,
)

log = logging.getLogger(__name__)

GpuSourceKind = Literal["nvml", "simulated", "auto"]
T = TypeVar("T")

_MIB = 1024 * 1024
# Bit names of nvmlDeviceGetCurrentClocksThrottleReasons, from pynvml's own constants;
# UserDefinedClocks is an alias of ApplicationsClocksSetting, All and None are not reasons.
THROTTLE_REASONS: dict[str, int] = {
    name.removeprefix("nvmlClocksThrottleReason"): bit
    for name, bit in vars(pynvml).items()
    if name.startswith("nvmlClocksThrottleReason")
    and name.removeprefix("nvmlClocksThrottleReason") not in ("All", "None", "UserDefinedClocks")
}


class GpuUnavailable(RuntimeError):
    """NVML was asked for and cannot be used (no driver, no GPU)."""


@dataclass(frozen=True, slots=True)
class GpuLoad:
    """What a simulated GPU follows: its runtime's state at the last scrape, and the GPUs the
    runtime simulator exports (with any faults injected into them)."""

    serving: bool = False  # a healthy runtime with a model loaded
    running: int = 0
    kv_cache_usage: float | None = None
    runtime_gpus: tuple[GpuReading, ...] = ()  # what the runtime simulator exports


class GpuSource(Protocol):
    kind: Literal["nvml", "simulated"]

    async def read(self, load: GpuLoad, now: float) -> list[GpuReading]:
        """One reading per GPU; `now` is monotonic seconds (the simulation integrates over it)."""
        ...

    def close(self) -> None: ...


def decode_throttle_reasons(mask: int) -> list[str]:
    return [name for name, bit in THROTTLE_REASONS.items() if mask & bit]


def mig_profile_of(device_name: str) -> str:
    """`NVIDIA H100 80GB HBM3 MIG 1g.10gb` -> `1g.10gb` (NVML names MIG devices so)."""
    return device_name.rsplit("MIG", 1)[-1].strip()


# NVML --------------------------------------------------------------------------------------


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value  # older bindings gave bytes


def _optional(call: Callable[..., T], *args: Any) -> T | None:
    """An NVML reading the GPU may not support (ECC on consumer cards, power on some boards)."""
    try:
        return call(*args)
    except pynvml.NVMLError:
        return None


class NvmlGpus:
    """Every GPU NVML sees. NVML calls block (milliseconds, more on a busy driver), so readings
    are taken in a worker thread."""

    kind: Literal["nvml"] = "nvml"

    def __init__(self) -> None:
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as exc:
            raise GpuUnavailable(
                f"NVML is not available ({exc}): no NVIDIA driver or GPU on this machine; "
                "use --gpu-source simulated (or auto) to run without one"
            ) from exc
        try:
            count = pynvml.nvmlDeviceGetCount()
            self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
            self._static = [self._identity(h) for h in self._handles]
        except pynvml.NVMLError as exc:
            pynvml.nvmlShutdown()
            raise GpuUnavailable(f"NVML could not list the GPUs: {exc}") from exc

    @staticmethod
    def _identity(handle: Any) -> tuple[str, str]:
        return _text(pynvml.nvmlDeviceGetUUID(handle)), _text(pynvml.nvmlDeviceGetName(handle))

    def hardware(self) -> tuple[str | None, int, float | None]:
        """(GPU name, count, VRAM GB per GPU) as found, for the node's facts."""
        if not self._handles:
            return None, 0, None
        total = pynvml.nvmlDeviceGetMemoryInfo(self._handles[0]).total
        return self._static[0][1], len(self._handles), round(total / 2**30, 1)

    async def read(self, load: GpuLoad, now: float) -> list[GpuReading]:
        return await asyncio.to_thread(self._read_all)

    def _read_all(self) -> list[GpuReading]:
        readings = []
        for i, handle in enumerate(self._handles):
            try:
                readings.append(self._read(i, handle))
            except pynvml.NVMLError as exc:  # e.g. fallen off the bus: report the others
                log.warning("GPU %d (%s): NVML reading failed: %s", i, self._static[i][0], exc)
        return readings

    def _read(self, index: int, handle: Any) -> GpuReading:
        gpu_uuid, name = self._static[index]
        util = _optional(pynvml.nvmlDeviceGetUtilizationRates, handle)
        mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
        power_mw = _optional(pynvml.nvmlDeviceGetPowerUsage, handle)
        limit_mw = _optional(pynvml.nvmlDeviceGetEnforcedPowerLimit, handle)
        sbe = _optional(
            pynvml.nvmlDeviceGetTotalEccErrors,
            handle,
            pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED,
            pynvml.NVML_VOLATILE_ECC,
        )
        dbe = _optional(
            pynvml.nvmlDeviceGetTotalEccErrors,
            handle,
            pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED,
            pynvml.NVML_VOLATILE_ECC,
        )
        throttle = _optional(pynvml.nvmlDeviceGetCurrentClocksThrottleReasons, handle)
        return GpuReading(
            index=index,
            uuid=gpu_uuid,
            name=name,
            utilPct=float(util.gpu) if util is not None else 0.0,
            memUsedMiB=int(mem.used // _MIB),
            memTotalMiB=int(mem.total // _MIB),
            tempC=float(pynvml.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU)),
            powerW=(power_mw or 0) / 1000,
            powerLimitW=(limit_mw or 0) / 1000,
            eccVolatileSbe=int(sbe or 0),
            eccVolatileDbe=int(dbe or 0),
            throttleReasons=decode_throttle_reasons(int(throttle or 0)),
            migProfile=self._mig_profiles(handle),
        )

    @staticmethod
    def _mig_profiles(handle: Any) -> str | None:
        mode = _optional(pynvml.nvmlDeviceGetMigMode, handle)
        if not mode or mode[0] != pynvml.NVML_DEVICE_MIG_ENABLE:
            return None
        profiles = []
        for i in range(pynvml.nvmlDeviceGetMaxMigDeviceCount(handle)):
            mig = _optional(pynvml.nvmlDeviceGetMigDeviceHandleByIndex, handle, i)
            if mig is not None:  # unused slots raise NotFound
                profiles.append(mig_profile_of(_text(pynvml.nvmlDeviceGetName(mig))))
        return ",".join(profiles) or None

    def close(self) -> None:
        pynvml.nvmlShutdown()


# Simulation --------------------------------------------------------------------------------

UTIL_TAU_S = 1.0  # NVML smooths utilisation over about a second
THERMAL_TAU_S = 20.0  # the heatsink: 63% of a step change in 20 s
FULL_BATCH = 32  # running sequences at which power and heat peak
SLOWDOWN_TEMP_C = 87.0


def profile_for(gpu: str | None, vram_gb: float | None = None) -> GpuProfile:
    """The runtime simulator's profile a NodeClass GPU name stands for (`H100-80G` -> H100);
    unknown names behave like an H100 under their own name. `vram_gb` overrides the size."""
    upper = (gpu or "H100").upper()
    profile = next((p for key, p in PROFILES.items() if key in upper), None)
    if profile is None:
        profile = replace(PROFILES["H100"], name=upper, gpu_name=gpu or "H100")
    return replace(profile, vram_gib=vram_gb) if vram_gb else profile


def intensity(load: GpuLoad) -> float:
    """How hard the GPU works, 0..1: busy whenever anything runs, harder with a fuller batch
    (the runtime simulator's model, so modelled GPUs look like the one it exports)."""
    if not load.serving or load.running <= 0:
        return 0.0
    return 0.5 + 0.5 * min(1.0, load.running / FULL_BATCH)


def lag(current: float, target: float, dt: float, tau: float) -> float:
    """First-order lag: where `current` is `dt` seconds later, heading for `target`."""
    return target + (current - target) * math.exp(-max(dt, 0.0) / tau)


class SimulatedGpus:
    """`count` GPUs of one profile serving one runtime (tensor parallel: all follow its load).

    Where the runtime is our simulator, it exports its own GPU (`infermesh_sim_gpu_*`, with the
    faults injected into it): that reading is GPU 0 as is. The others are modelled here from the
    runtime's load. UUIDs derive from the node name, so a restarted agent reports the same GPUs.
    """

    kind: Literal["simulated"] = "simulated"

    def __init__(self, node: str, profile: GpuProfile, count: int) -> None:
        self.profile = profile
        self._node = node
        self._uuids = [self._derived_uuid(i) for i in range(count)]
        self._util = 0.0
        self._intensity = 0.0
        self._temp = profile.idle_temp_c
        self._at: float | None = None
        # the last modelled reading and runtime GPUs, and the readings made of them
        self._last: tuple[GpuReading, tuple[GpuReading, ...], list[GpuReading]] | None = None

    async def read(self, load: GpuLoad, now: float) -> list[GpuReading]:
        self._advance(load, now)
        p = self.profile
        total_mib = int(p.vram_gib * 1024)
        # vLLM's layout: the weights, then a KV pool filling its share of what is left.
        weights_mib = min(DEFAULT_WEIGHTS_GIB * 1024, total_mib * DEFAULT_GPU_MEMORY_UTILIZATION)
        pool_mib = total_mib * DEFAULT_GPU_MEMORY_UTILIZATION - weights_mib
        kv = load.kv_cache_usage or 0.0
        used_mib = int(weights_mib + pool_mib * kv) if load.serving else 0
        modelled = GpuReading(
            index=0,
            uuid="",
            name=p.gpu_name,
            utilPct=round(self._util, 1),
            memUsedMiB=used_mib,
            memTotalMiB=total_mib,
            tempC=round(self._temp, 1),
            powerW=round(p.idle_power_w + (p.power_limit_w - p.idle_power_w) * self._intensity, 1),
            powerLimitW=p.power_limit_w,
            throttleReasons=["HwThermalSlowdown"] if self._temp >= SLOWDOWN_TEMP_C else [],
        )
        if (
            self._last is not None
            and self._last[0] == modelled
            and self._last[1] is load.runtime_gpus
        ):
            return self._last[2]  # an idle node's readings settle: no need to copy them anew
        while len(self._uuids) < len(load.runtime_gpus):  # more GPUs than the facts said
            self._uuids.append(self._derived_uuid(len(self._uuids)))
        readings = []
        for i in range(len(self._uuids)):
            if i < len(load.runtime_gpus):
                exported = load.runtime_gpus[i]
                self._uuids[i] = exported.uuid or self._uuids[i]  # keep it while it is away
                readings.append(exported.model_copy(update={"index": i, "uuid": self._uuids[i]}))
            else:
                readings.append(modelled.model_copy(update={"index": i, "uuid": self._uuids[i]}))
        self._last = (modelled, load.runtime_gpus, readings)
        return readings

    def _derived_uuid(self, index: int) -> str:
        return f"GPU-{uuid.uuid5(uuid.NAMESPACE_URL, f'infermesh-sim/{self._node}/{index}')}"

    def _advance(self, load: GpuLoad, now: float) -> None:
        dt = 0.0 if self._at is None else now - self._at
        self._at = now
        busy = 100.0 if load.serving and load.running > 0 else 0.0
        work = intensity(load)
        p = self.profile
        self._util = lag(self._util, busy, dt, UTIL_TAU_S)
        self._intensity = lag(self._intensity, work, dt, UTIL_TAU_S)
        target = p.idle_temp_c + (p.load_temp_c - p.idle_temp_c) * self._intensity
        self._temp = lag(self._temp, target, dt, THERMAL_TAU_S)

    def close(self) -> None:
        pass


def open_nvml(kind: GpuSourceKind, node: str) -> NvmlGpus | None:
    """NVML for "nvml" (`GpuUnavailable` when it cannot be used) and, when it works, for
    "auto"; None means the node's GPUs are simulated."""
    if kind == "simulated":
        return None
    try:
        return NvmlGpus()
    except GpuUnavailable as exc:
        if kind == "nvml":
            raise
        log.info("node %s: %s; simulating its GPUs", node, exc)
        return None
