"""Continuous batching, after vLLM's (v1) scheduler: a pure, deterministic step function.

Each `step()` builds one batch and says what it produced and how long it took on the profile:

- Running sequences come first, in admission order: a decoding sequence computes 1 token, one
  still prefilling computes its next chunk. The step's token budget is `max_num_batched_tokens`.
- KV cache is counted in blocks of `block_size` tokens. When a running sequence needs a block
  and none is free, the newest running sequence is preempted (recompute: its blocks are freed,
  it goes back to the front of the waiting queue and later prefills prompt + output again).
- Then, if nothing was preempted, waiting sequences are admitted in FIFO order while there is
  budget, a free slot (`max_num_seqs`) and KV room for their first chunk. Admission looks the
  prompt up in the prefix cache; cached tokens are not computed again (at least one always is,
  as in vLLM, to produce a token).
- A sequence whose known tokens are all computed samples its next token; it finishes when it
  has produced `output_tokens`.

There is no clock here: the caller (the engine) sleeps `Step.seconds`, which is what makes the
scheduler testable step by step.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

from infermesh.agent.sim.latency import step_seconds
from infermesh.agent.sim.prefix_cache import PrefixCache, block_hashes
from infermesh.agent.sim.profiles import GpuProfile


@dataclass(frozen=True)
class SchedulerConfig:
    kv_capacity_tokens: int
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    block_size: int = 16

    def __post_init__(self) -> None:
        for name in ("kv_capacity_tokens", "max_num_seqs", "max_num_batched_tokens", "block_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.kv_capacity_tokens < self.block_size:
            raise ValueError("kv_capacity_tokens must hold at least one block")


@dataclass(frozen=True)
class NewSequence:
    request_id: str
    prompt: Sequence[Hashable]  # token identities: equal prefixes hit the prefix cache
    output_tokens: int  # tokens to produce before the sequence finishes


@dataclass(frozen=True)
class TokenOutput:
    request_id: str
    index: int  # 0 for the first generated token
    finished: bool


@dataclass(frozen=True)
class Step:
    seconds: float
    batch_size: int
    prefill_tokens: int
    decode_seqs: int
    outputs: tuple[TokenOutput, ...]
    preempted: tuple[str, ...]
    cache_queried_tokens: int
    cache_hit_tokens: int


@dataclass(eq=False)
class _Seq:
    request_id: str
    prompt: Sequence[Hashable]
    output_tokens: int
    keys: list[int]
    generated: int = 0
    computed: int = 0
    blocks: int = 0
    running: bool = False

    @property
    def num_tokens(self) -> int:
        return len(self.prompt) + self.generated


class Scheduler:
    def __init__(self, profile: GpuProfile, config: SchedulerConfig) -> None:
        self.profile = profile
        self.config = config
        self.total_blocks = config.kv_capacity_tokens // config.block_size
        self.used_blocks = 0
        self._cache = PrefixCache(self.total_blocks)
        self._waiting: deque[_Seq] = deque()
        self._running: list[_Seq] = []
        self._seqs: dict[str, _Seq] = {}

    @property
    def num_running(self) -> int:
        return len(self._running)

    @property
    def num_waiting(self) -> int:
        return len(self._waiting)

    @property
    def kv_usage(self) -> float:
        """Share of KV blocks held by sequences, 0..1 (vLLM's `kv_cache_usage_perc`)."""
        return self.used_blocks / self.total_blocks

    def add(self, new: NewSequence) -> None:
        if new.request_id in self._seqs:
            raise ValueError(f"request {new.request_id!r} is already scheduled")
        if not new.prompt or new.output_tokens < 1:
            raise ValueError("a sequence needs at least one prompt token and one output token")
        need = self._blocks_for(len(new.prompt) + new.output_tokens)
        if need > self.total_blocks:
            # It could never run to the end, even alone: the caller must bound lengths first.
            raise ValueError(
                f"{len(new.prompt) + new.output_tokens} tokens exceed the KV cache "
                f"({self.total_blocks * self.config.block_size} tokens)"
            )
        seq = _Seq(
            new.request_id,
            new.prompt,
            new.output_tokens,
            block_hashes(new.prompt, self.config.block_size),
        )
        self._seqs[new.request_id] = seq
        self._waiting.append(seq)

    def abort(self, request_id: str) -> bool:
        """Drop a sequence wherever it is and free its KV; False if it is unknown (finished)."""
        seq = self._seqs.pop(request_id, None)
        if seq is None:
            return False
        if seq.running:
            self._running.remove(seq)
        else:
            self._waiting.remove(seq)
        self._free(seq)
        return True

    def step(self) -> Step | None:
        """Run one batch; None when there is nothing to do."""
        if not self._seqs:
            return None
        budget = self.config.max_num_batched_tokens
        scheduled: list[tuple[_Seq, int]] = []
        preempted: list[str] = []

        index = 0
        while index < len(self._running) and budget > 0:
            seq = self._running[index]
            tokens = min(seq.num_tokens - seq.computed, budget)
            if not self._make_room(seq, tokens, preempted):
                break  # `seq` was the newest and preempted itself
            scheduled.append((seq, tokens))
            budget -= tokens
            index += 1

        queried = hits = 0
        while (
            not preempted
            and self._waiting
            and budget > 0
            and len(self._running) < self.config.max_num_seqs
        ):
            seq = self._waiting[0]
            cached = self._cache.lookup(seq.keys) * self.config.block_size
            seq.computed = min(cached, seq.num_tokens - 1)
            tokens = min(seq.num_tokens - seq.computed, budget)
            if not self._allocate(seq, tokens):
                seq.computed = 0
                break  # head-of-line: FIFO order is kept, as in vLLM
            self._waiting.popleft()
            self._running.append(seq)
            seq.running = True
            queried += len(seq.prompt)
            hits += seq.computed
            scheduled.append((seq, tokens))
            budget -= tokens

        return self._execute(scheduled, tuple(preempted), queried, hits)

    def _execute(
        self,
        scheduled: list[tuple[_Seq, int]],
        preempted: tuple[str, ...],
        queried: int,
        hits: int,
    ) -> Step:
        prefill_tokens = decode_seqs = 0
        outputs: list[TokenOutput] = []
        finished: list[_Seq] = []
        for seq, tokens in scheduled:
            if seq.generated > 0 and seq.computed == seq.num_tokens - 1:
                decode_seqs += 1
            else:
                prefill_tokens += tokens
            seq.computed += tokens
            if seq.computed < seq.num_tokens:
                continue  # a prefill chunk with more to come
            if seq.computed - tokens < len(seq.prompt):
                self._cache.insert(seq.keys)  # the prompt has just been computed in full
            seq.generated += 1
            done = seq.generated >= seq.output_tokens
            outputs.append(TokenOutput(seq.request_id, seq.generated - 1, done))
            if done:
                finished.append(seq)
        for seq in finished:
            del self._seqs[seq.request_id]
            self._running.remove(seq)
            self._free(seq)
        return Step(
            seconds=step_seconds(
                self.profile, prefill_tokens=prefill_tokens, decode_seqs=decode_seqs
            ),
            batch_size=len(scheduled),
            prefill_tokens=prefill_tokens,
            decode_seqs=decode_seqs,
            outputs=tuple(outputs),
            preempted=preempted,
            cache_queried_tokens=queried,
            cache_hit_tokens=hits,
        )

    def _blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.config.block_size)

    def _allocate(self, seq: _Seq, tokens: int) -> bool:
        need = self._blocks_for(seq.computed + tokens) - seq.blocks
        if need > self.total_blocks - self.used_blocks:
            return False
        if need > 0:
            seq.blocks += need
            self.used_blocks += need
        return True

    def _make_room(self, seq: _Seq, tokens: int, preempted: list[str]) -> bool:
        """Allocate KV for `seq`, preempting the newest running sequences until it fits."""
        while not self._allocate(seq, tokens):
            victim = self._running[-1]
            self._preempt(victim)
            preempted.append(victim.request_id)
            if victim is seq:
                return False
        return True

    def _free(self, seq: _Seq) -> None:
        self.used_blocks -= seq.blocks
        seq.blocks = 0

    def _preempt(self, seq: _Seq) -> None:
        self._running.remove(seq)
        seq.running = False
        self._free(seq)
        seq.computed = 0
        self._waiting.appendleft(seq)
