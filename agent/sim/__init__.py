"""The vLLM-compatible runtime simulator (`infermesh sim-runtime`).

An OpenAI-compatible HTTP server whose answers follow a latency model instead of a GPU:

- `profiles`: GPU profiles (H100, A100, L4, CPU) and the KV-cache capacity they leave.
- `tokens`: the tokenizer approximation, the chat template's token count and the pseudo-text.
- `latency`: how long one engine step takes (prefill and decode), a pure function.
- `prefix_cache`: the prompt-block prefix cache (LRU, bounded by the KV capacity).
- `scheduler`: continuous batching (waiting queue, chunked prefill, KV blocks, preemption).
- `engine`: the asyncio step loop that drives the scheduler in (scaled) real time.
- `gpu`: the simulated GPU (utilisation, VRAM, power, temperature, ECC, throttling).
- `faults`: fault injection (error header, error rate, slow mode, crash, thermal, ECC).
- `metrics`: the `vllm:` metrics and the simulator's `infermesh_sim_gpu_*` metrics.
- `protocol`: OpenAI request validation and response shapes.
- `simulator`: `SimConfig`, and one simulator's parts built from it.
- `server`: the HTTP app, `serve` (blocking) and `start` (in-process, for fleets).

Only `server` imports the HTTP stack, so the pure parts load without it.
"""
