"""GPU telemetry: the simulated GPU follows its runtime's load; NVML is used where a driver
answers, its absence is handled cleanly, and the NVML path is tested where a GPU is present."""

from __future__ import annotations

import logging

import pynvml
import pytest

from infermesh.agent.gpu import (
    GpuLoad,
    GpuUnavailable,
    NvmlGpus,
    SimulatedGpus,
    decode_throttle_reasons,
    mig_profile_of,
    open_nvml,
    profile_for,
)
from infermesh.agent.report import GpuReading


def nvml_problem() -> str | None:
    """Why NVML cannot be used here, or None when it can."""
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return str(exc)
    try:
        if pynvml.nvmlDeviceGetCount() == 0:
            return "NVML answers but sees no GPU"
    finally:
        pynvml.nvmlShutdown()
    return None


NVML_PROBLEM = nvml_problem()
needs_gpu = pytest.mark.skipif(
    NVML_PROBLEM is not None, reason=f"needs an NVIDIA GPU and driver: {NVML_PROBLEM}"
)
needs_no_gpu = pytest.mark.skipif(
    NVML_PROBLEM is None, reason="an NVIDIA GPU is present, so NVML's absence cannot be seen"
)

BUSY = GpuLoad(serving=True, running=32, kv_cache_usage=0.5)
IDLE = GpuLoad(serving=True, running=0, kv_cache_usage=0.0)


async def test_simulated_gpu_follows_load_with_thermal_inertia() -> None:
    gpus = SimulatedGpus("n1", profile_for("H100-80G"), 2)
    (idle, _) = await gpus.read(IDLE, 0.0)
    assert (idle.utilPct, idle.powerW, idle.powerLimitW) == (0.0, 70.0, 700.0)
    assert idle.name == "NVIDIA H100 80GB HBM3" and idle.memTotalMiB > 80_000

    first = (await gpus.read(BUSY, 5.0))[0]
    assert first.utilPct > 95  # busy share: any running batch keeps the GPU busy
    assert first.memUsedMiB > idle.memUsedMiB  # the KV cache fills
    assert idle.tempC < first.tempC < 50  # warming, but the heatsink lags
    settled = (await gpus.read(BUSY, 300.0))[0]
    assert settled.tempC == pytest.approx(68.0, abs=0.5)  # the profile's full-load temperature
    assert settled.powerW == pytest.approx(700.0, abs=1)

    cooling = (await gpus.read(IDLE, 305.0))[0]
    assert cooling.utilPct < 5 and 50 < cooling.tempC < settled.tempC


async def test_profiles_set_size_and_power() -> None:
    (l4,) = await SimulatedGpus("n2", profile_for("L4"), 1).read(BUSY, 0.0)
    assert l4.name == "NVIDIA L4" and l4.powerLimitW == 72 and l4.memTotalMiB < 24 * 1024
    (a100,) = await SimulatedGpus("n3", profile_for("a100-80g"), 1).read(IDLE, 0.0)
    assert a100.powerLimitW == 400
    unknown = profile_for("B200", vram_gb=180)
    assert unknown.gpu_name == "B200" and unknown.vram_gib == 180


async def test_uuids_are_stable_per_node() -> None:
    first = await SimulatedGpus("n1", profile_for("H100"), 2).read(IDLE, 0.0)
    again = await SimulatedGpus("n1", profile_for("H100"), 2).read(IDLE, 0.0)
    other = await SimulatedGpus("n2", profile_for("H100"), 2).read(IDLE, 0.0)
    assert [g.uuid for g in first] == [g.uuid for g in again]
    assert first[0].uuid != first[1].uuid and first[0].uuid != other[0].uuid
    assert all(g.uuid.startswith("GPU-") for g in first)


async def test_the_runtime_simulators_gpu_is_gpu_zero_faults_included() -> None:
    exported = GpuReading(
        index=0,
        uuid="GPU-from-sim",
        name="NVIDIA H100 80GB HBM3",
        utilPct=99,
        memUsedMiB=50_000,
        memTotalMiB=81_510,
        tempC=96.5,
        powerW=690,
        powerLimitW=700,
        eccVolatileDbe=2,
        throttleReasons=["HwThermalSlowdown"],
    )
    gpus = SimulatedGpus("n1", profile_for("H100"), 2)
    load = GpuLoad(serving=True, running=1, runtime_gpus=(exported,))
    first, second = await gpus.read(load, 0.0)
    assert first == exported
    assert second.eccVolatileDbe == 0 and second.tempC < 90  # modelled from the load
    # The runtime going away does not change the GPU's identity.
    (again, _) = await gpus.read(IDLE, 1.0)
    assert again.uuid == "GPU-from-sim"
    # A node whose facts name no GPUs still shows the one its runtime exports.
    (only,) = await SimulatedGpus("n9", profile_for(None), 0).read(load, 0.0)
    assert only == exported


def test_throttle_reasons_and_mig_profiles_decode_as_nvml_names_them() -> None:
    mask = pynvml.nvmlClocksThrottleReasonSwPowerCap | pynvml.nvmlClocksThrottleReasonHwSlowdown
    assert decode_throttle_reasons(mask) == ["SwPowerCap", "HwSlowdown"]
    assert decode_throttle_reasons(0) == []
    assert mig_profile_of("NVIDIA H100 80GB HBM3 MIG 1g.10gb") == "1g.10gb"


def test_simulated_never_touches_nvml() -> None:
    assert open_nvml("simulated", "n1") is None


@needs_no_gpu
def test_auto_falls_back_to_simulation_without_nvml(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="infermesh.agent.gpu"):
        assert open_nvml("auto", "n1") is None
    assert "simulating its GPUs" in caplog.text and "NVML is not available" in caplog.text


@needs_no_gpu
def test_nvml_asked_for_without_a_driver_fails_clearly() -> None:
    with pytest.raises(GpuUnavailable, match=r"NVML is not available.*--gpu-source simulated"):
        open_nvml("nvml", "n1")


@needs_gpu
async def test_nvml_reads_every_gpu() -> None:
    gpus = open_nvml("nvml", "n1")
    assert isinstance(gpus, NvmlGpus)
    try:
        name, count, vram_gb = gpus.hardware()
        readings = await gpus.read(GpuLoad(), 0.0)
        assert len(readings) == count > 0 and name
        assert vram_gb is not None and vram_gb > 1
        for i, g in enumerate(readings):
            assert g.index == i and g.uuid.startswith(("GPU-", "MIG-"))
            assert 0 <= g.utilPct <= 100
            assert 0 <= g.memUsedMiB <= g.memTotalMiB and g.memTotalMiB > 0
            assert 0 < g.tempC < 120
            assert g.eccVolatileDbe >= 0 and g.eccVolatileSbe >= 0
            assert all(r in decode_throttle_reasons(0xFFFF) for r in g.throttleReasons)
    finally:
        gpus.close()


@needs_gpu
def test_auto_uses_nvml_where_a_gpu_is_present() -> None:
    gpus = open_nvml("auto", "n1")
    assert isinstance(gpus, NvmlGpus)
    gpus.close()
