"""One simulator's parts, built from its configuration: profile, scheduler, GPU, engine, faults.

The HTTP layer (`server`) holds a `Simulator` and asks it for the decisions a request needs; the
parts themselves know nothing of HTTP.
"""

from __future__ import annotations

import random
import time
import uuid
from dataclasses import dataclass, field

from infermesh.agent.sim.engine import Engine
from infermesh.agent.sim.faults import FaultPatch, Faults
from infermesh.agent.sim.gpu import SimulatedGpu
from infermesh.agent.sim.metrics import SimMetrics
from infermesh.agent.sim.profiles import (
    DEFAULT_KV_BYTES_PER_TOKEN,
    DEFAULT_WEIGHTS_GIB,
    GIB,
    get_profile,
    kv_capacity_tokens,
)
from infermesh.agent.sim.protocol import GenerationRequest, plan_output
from infermesh.agent.sim.scheduler import Scheduler, SchedulerConfig
from infermesh.agent.sim.tokens import natural_length, request_rng
from infermesh.agent.sim.wan import Wan


@dataclass(frozen=True)
class SimConfig:
    """A simulator. `model` is the served model name (vLLM's `--served-model-name`)."""

    model: str
    profile: str = "H100"
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    max_model_len: int = 8192
    block_size: int = 16
    kv_capacity_tokens: int | None = None  # None: what the profile's VRAM leaves beside weights
    weights_gib: float = DEFAULT_WEIGHTS_GIB
    seed: int | None = None  # None: a different random stream per run
    time_scale: float = 1.0  # wall seconds per simulated second: 0.1 runs 10x faster
    gpu_uuid: str | None = None  # None: derived from the seed (random without one)
    host: str = "127.0.0.1"
    port: int = 0  # 0: a free port chosen by the OS (`start` reports it)
    wan: Wan = field(default_factory=Wan)  # where the node is: callers from afar pay the RTT


@dataclass(frozen=True)
class Plan:
    """What a request will produce: `output_tokens` ending with `finish_reason`."""

    output_tokens: int
    finish_reason: str
    rng: random.Random


class Simulator:
    def __init__(self, config: SimConfig) -> None:
        if config.time_scale <= 0:
            raise ValueError("time_scale must be greater than 0")
        self.config = config
        self.profile = get_profile(config.profile)
        self.created = int(time.time())
        self.rng = random.Random(config.seed)
        kv_tokens = config.kv_capacity_tokens or kv_capacity_tokens(
            self.profile, weights_gib=config.weights_gib
        )
        sched_config = SchedulerConfig(
            kv_capacity_tokens=kv_tokens,
            max_num_seqs=config.max_num_seqs,
            max_num_batched_tokens=config.max_num_batched_tokens,
            block_size=config.block_size,
        )
        blocks = kv_tokens // config.block_size
        if -(-config.max_model_len // config.block_size) > blocks:
            raise ValueError(
                f"max_model_len ({config.max_model_len}) is larger than the KV cache "
                f"({blocks * config.block_size} tokens); lower max_model_len or give more KV"
            )
        self.faults = Faults()
        self.gpu = SimulatedGpu(
            self.profile,
            uuid=config.gpu_uuid or f"GPU-{uuid.UUID(int=self.rng.getrandbits(128))}",
            weights_bytes=int(config.weights_gib * GIB),
            kv_bytes_per_token=DEFAULT_KV_BYTES_PER_TOKEN,
            now=0.0,
        )
        self.scheduler = Scheduler(self.profile, sched_config)
        # The metrics read the engine's live state at scrape time; the engine records into them.
        self.metrics = SimMetrics(config.model, self.profile.name, lambda: self.engine.live_state())
        self.engine = Engine(
            self.scheduler, self.gpu, self.metrics, self.faults, time_scale=config.time_scale
        )

    def plan(self, request: GenerationRequest) -> Plan:
        """Decide the reply's length; raises a 400 ApiError when it cannot fit the context."""
        seed = request.seed if request.seed is not None else self.rng.getrandbits(64)
        rng = request_rng(seed, request.prompt)
        tokens, reason = plan_output(request, self.config.max_model_len, natural_length(rng))
        return Plan(tokens, reason, rng)

    def inject_error(self) -> bool:
        """Whether this request falls in the standing `error_rate`."""
        return self.faults.error_rate > 0 and self.rng.random() < self.faults.error_rate

    def apply(self, patch: FaultPatch) -> None:
        patch.apply(self.faults)
        self.gpu.thermal_runaway = self.faults.thermal
        self.gpu.ecc_sbe += patch.ecc_sbe
        self.gpu.ecc_dbe += patch.ecc_dbe

    def clear_faults(self) -> None:
        self.apply(FaultPatch(error_rate=0.0, slow_factor=1.0, thermal=False))

    def fault_state(self) -> dict[str, float | bool | int]:
        return {
            "error_rate": self.faults.error_rate,
            "slow_factor": self.faults.slow_factor,
            "thermal": self.faults.thermal,
            "ecc_sbe": self.gpu.ecc_sbe,
            "ecc_dbe": self.gpu.ecc_dbe,
        }
