"""The latency model: how long one engine step takes on a GPU profile.

A step runs one forward pass over a batch that mixes prefill chunks and decodes, as vLLM's
chunked-prefill scheduler does:

    step = [prefill_overhead + prefill_s_per_token x prefill tokens]   (if it prefills anything)
         + [base_itl x (1 + itl_batch_alpha x decoding sequences)]     (if it decodes anything)

so the inter-token latency every decoding request sees grows with the batch, and with any
prefill that shares its step. Prefix-cache hits never reach this function: the scheduler only
counts tokens it actually computes.
"""

from __future__ import annotations

from infermesh.agent.sim.profiles import GpuProfile


def step_seconds(profile: GpuProfile, *, prefill_tokens: int, decode_seqs: int) -> float:
    seconds = 0.0
    if prefill_tokens > 0:
        seconds += profile.prefill_overhead_s + profile.prefill_s_per_token * prefill_tokens
    if decode_seqs > 0:
        seconds += profile.base_itl_s * (1 + profile.itl_batch_alpha * decode_seqs)
    return seconds
