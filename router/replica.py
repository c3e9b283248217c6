"""`Replica`: one runtime serving one model revision on one node, as the router sees it.

Built by the router's view from the Node object (operator intent: cordon, drain, quarantine) and
the agent's lease-bound report (facts, GPU and runtime telemetry). Immutable: a new report makes a
new Replica, so a snapshot handed to a strategy never changes under it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Replica:
    node: str
    url: str  # runtime base URL, e.g. http://127.0.0.1:8101
    model: str  # the model revision it serves, e.g. chat-70b@q4_k_m
    slot: int  # index into the router's live per-replica arrays (in-flight, breaker)
    domain: str | None = None
    region: str | None = None
    zone: str | None = None
    residency: str | None = None  # EU, US...: the node's, else its domain's
    link_classes: tuple[str, ...] = ()
    gpu: str | None = None
    gpu_count: int = 0
    price_per_gpu_hour: float | None = None
    # What operators and the agent say (conditions of the node).
    ready: bool = True
    cordoned: bool = False
    draining: bool = False
    quarantined: bool = False
    # Agent-reported runtime telemetry (as of `reported_at`, epoch seconds).
    runtime_healthy: bool = True
    running: int = 0
    waiting: int = 0
    # The most requests the runtime has been seen running at once (the view keeps the peak of
    # its reports): its batch size, once a report has caught it full.
    peak_running: int = 0
    kv_cache_usage: float | None = None  # 0..1
    generation_tokens_per_s: float | None = None
    ttft_p50_ms: float | None = None
    loaded: bool = True  # False: the model is not loaded yet (cold start ahead)
    # GPU health, worst over the node's GPUs.
    max_temp_c: float | None = None
    ecc_dbe: int = 0
    throttled: bool = False
    reported_at: float = 0.0

    @property
    def serving(self) -> bool:
        """May take new requests: Ready, not draining, not quarantined (cordon only stops
        placements, serving continues)."""
        return self.ready and not self.draining and not self.quarantined and self.runtime_healthy
