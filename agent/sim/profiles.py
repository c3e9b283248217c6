"""GPU profiles: the speeds and sizes that make an H100 simulator behave unlike an L4 one.

Figures are for a Llama-3-8B-class model in bf16 (about 15 GiB of weights, 128 KiB of KV cache per
token: 32 layers x 8 KV heads x 128 dims x 2 (K and V) x 2 bytes), in the range vLLM reaches on
each card. They are a model, not a measurement: what matters is their order and ratios.
"""

from __future__ import annotations

from dataclasses import dataclass

GIB = 1 << 30
DEFAULT_WEIGHTS_GIB = 15.0
DEFAULT_KV_BYTES_PER_TOKEN = 128 * 1024
# vLLM's --gpu-memory-utilization default: the share of VRAM it may use for weights and KV cache.
DEFAULT_GPU_MEMORY_UTILIZATION = 0.9


@dataclass(frozen=True)
class GpuProfile:
    name: str
    gpu_name: str  # what NVML would call the device
    vram_gib: float
    prefill_overhead_s: float  # fixed cost of a step that prefills anything
    prefill_s_per_token: float
    base_itl_s: float  # decode step time at batch size 1 (before the batch term)
    itl_batch_alpha: float  # decode step time grows by this fraction per sequence in the batch
    idle_power_w: float
    power_limit_w: float
    idle_temp_c: float
    load_temp_c: float  # steady temperature at full power


PROFILES: dict[str, GpuProfile] = {
    p.name: p
    for p in (
        GpuProfile(
            name="H100",
            gpu_name="NVIDIA H100 80GB HBM3",
            vram_gib=79.6,
            prefill_overhead_s=0.010,
            prefill_s_per_token=1 / 25_000,
            base_itl_s=0.0065,
            itl_batch_alpha=0.006,
            idle_power_w=70,
            power_limit_w=700,
            idle_temp_c=32,
            load_temp_c=68,
        ),
        GpuProfile(
            name="A100",
            gpu_name="NVIDIA A100-SXM4-80GB",
            vram_gib=79.2,
            prefill_overhead_s=0.015,
            prefill_s_per_token=1 / 12_000,
            base_itl_s=0.011,
            itl_batch_alpha=0.008,
            idle_power_w=60,
            power_limit_w=400,
            idle_temp_c=33,
            load_temp_c=65,
        ),
        GpuProfile(
            name="L4",
            gpu_name="NVIDIA L4",
            vram_gib=22.5,
            prefill_overhead_s=0.025,
            prefill_s_per_token=1 / 3_000,
            base_itl_s=0.055,
            itl_batch_alpha=0.010,
            idle_power_w=16,
            power_limit_w=72,
            idle_temp_c=35,
            load_temp_c=75,
        ),
        # A small, slow device for laptops and tests; not a GPU NVML would report.
        GpuProfile(
            name="CPU",
            gpu_name="CPU (simulated)",
            vram_gib=32.0,
            prefill_overhead_s=0.050,
            prefill_s_per_token=1 / 500,
            base_itl_s=0.080,
            itl_batch_alpha=0.020,
            idle_power_w=10,
            power_limit_w=150,
            idle_temp_c=40,
            load_temp_c=70,
        ),
    )
}


def get_profile(name: str) -> GpuProfile:
    """The profile called `name` (any case); a ValueError naming the known ones otherwise."""
    found = PROFILES.get(name.upper())
    if found is None:
        raise ValueError(f"unknown GPU profile {name!r}; known: {', '.join(PROFILES)}")
    return found


def kv_capacity_tokens(
    profile: GpuProfile,
    *,
    weights_gib: float = DEFAULT_WEIGHTS_GIB,
    kv_bytes_per_token: int = DEFAULT_KV_BYTES_PER_TOKEN,
    gpu_memory_utilization: float = DEFAULT_GPU_MEMORY_UTILIZATION,
) -> int:
    """Tokens of KV cache that fit beside the weights, as vLLM sizes its cache at start-up."""
    free_bytes = (profile.vram_gib * gpu_memory_utilization - weights_gib) * GIB
    tokens = int(free_bytes // kv_bytes_per_token)
    if tokens <= 0:
        raise ValueError(
            f"{weights_gib} GiB of weights leave no room for a KV cache on {profile.name} "
            f"({profile.vram_gib} GiB at {gpu_memory_utilization:.0%} utilisation)"
        )
    return tokens
