"""The runtime simulator's pure parts: latency model, continuous batching, prefix cache, KV
preemption, the simulated GPU, tokens and reply planning. No HTTP, no clock: steps are counted
and their modelled durations compared."""

from __future__ import annotations

import pytest

from infermesh.agent.sim.faults import FaultError, parse_patch, returned_error_status
from infermesh.agent.sim.gpu import SLOWDOWN_TEMP_C, SimulatedGpu
from infermesh.agent.sim.latency import step_seconds
from infermesh.agent.sim.profiles import PROFILES, get_profile, kv_capacity_tokens
from infermesh.agent.sim.protocol import (
    ApiError,
    StopChecker,
    parse_chat,
    parse_completion,
    plan_output,
)
from infermesh.agent.sim.scheduler import NewSequence, Scheduler, SchedulerConfig, Step
from infermesh.agent.sim.simulator import SimConfig, Simulator
from infermesh.agent.sim.tokens import (
    chat_prompt_tokens,
    next_piece,
    request_rng,
    tokenize,
)

H100 = get_profile("H100")


def scheduler(**kwargs: int) -> Scheduler:
    config = {"kv_capacity_tokens": 100_000, "max_num_seqs": 256, **kwargs}
    return Scheduler(H100, SchedulerConfig(**config))


def prompt(name: str, tokens: int) -> list[str]:
    return [f"{name}{i}" for i in range(tokens)]


def run(sched: Scheduler, limit: int = 10_000) -> list[Step]:
    steps = []
    while (step := sched.step()) is not None:
        steps.append(step)
        assert len(steps) < limit, "the scheduler never drains"
    return steps


def tokens_by_request(steps: list[Step]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for step in steps:
        for token in step.outputs:
            out.setdefault(token.request_id, []).append(token.index)
    return out


# --- latency model and profiles ---------------------------------------------------------------


def test_decode_step_time_grows_with_the_batch() -> None:
    times = [step_seconds(H100, prefill_tokens=0, decode_seqs=n) for n in (1, 8, 64, 256)]
    assert times == sorted(times) and len(set(times)) == 4


def test_prefill_time_is_overhead_plus_per_token() -> None:
    short = step_seconds(H100, prefill_tokens=100, decode_seqs=0)
    long = step_seconds(H100, prefill_tokens=1100, decode_seqs=0)
    assert long - short == pytest.approx(1000 * H100.prefill_s_per_token)
    assert short > H100.prefill_overhead_s


def test_profiles_order_speed_and_kv_capacity() -> None:
    h100, a100, l4 = (get_profile(n) for n in ("h100", "A100", "L4"))
    assert h100.base_itl_s < a100.base_itl_s < l4.base_itl_s
    assert h100.prefill_s_per_token < a100.prefill_s_per_token < l4.prefill_s_per_token
    assert kv_capacity_tokens(l4) < kv_capacity_tokens(a100) <= kv_capacity_tokens(h100)
    assert {"H100", "A100", "L4", "CPU"} <= set(PROFILES)


def test_unknown_profile_and_oversized_weights_are_refused() -> None:
    with pytest.raises(ValueError, match="known: H100"):
        get_profile("TPU")
    with pytest.raises(ValueError, match="no room for a KV cache"):
        kv_capacity_tokens(get_profile("L4"), weights_gib=140)


# --- continuous batching -----------------------------------------------------------------------


def test_requests_beyond_max_num_seqs_wait_in_fifo_order() -> None:
    sched = scheduler(max_num_seqs=2)
    for name in "abc":
        sched.add(NewSequence(name, prompt(name, 20), output_tokens=3))
    first = sched.step()
    assert first is not None
    assert {t.request_id for t in first.outputs} == {"a", "b"}
    assert (sched.num_running, sched.num_waiting) == (2, 1)
    steps = [first, *run(sched)]
    # c is admitted in the step after a and b finish, not before.
    done_at = {t.request_id: i for i, s in enumerate(steps) for t in s.outputs if t.finished}
    c_first = next(i for i, s in enumerate(steps) if any(t.request_id == "c" for t in s.outputs))
    assert c_first > max(done_at["a"], done_at["b"])
    assert tokens_by_request(steps) == {"a": [0, 1, 2], "b": [0, 1, 2], "c": [0, 1, 2]}


def test_new_requests_join_a_running_batch() -> None:
    sched = scheduler()
    sched.add(NewSequence("long", prompt("l", 10), output_tokens=20))
    for _ in range(5):
        sched.step()
    sched.add(NewSequence("late", prompt("x", 10), output_tokens=2))
    step = sched.step()
    assert step is not None
    assert {t.request_id for t in step.outputs} == {"long", "late"}
    assert sched.num_running == 2


def test_long_prompts_prefill_in_chunks_while_others_decode() -> None:
    sched = scheduler(max_num_batched_tokens=64)
    sched.add(NewSequence("chat", prompt("c", 8), output_tokens=50))
    sched.step()
    sched.add(NewSequence("doc", prompt("d", 200), output_tokens=1))
    chunked = [sched.step() for _ in range(4)]
    assert all(s is not None and s.outputs[0].request_id == "chat" for s in chunked)
    assert [len(s.outputs) for s in chunked if s] == [1, 1, 1, 2]  # doc's token after 4 chunks
    assert all(s is not None and s.prefill_tokens <= 63 for s in chunked)


def test_itl_seen_by_a_request_grows_with_concurrent_requests() -> None:
    def decode_step(concurrent: int) -> float:
        sched = scheduler()
        for i in range(concurrent):
            sched.add(NewSequence(f"r{i}", prompt(f"p{i}", 16), output_tokens=10))
        sched.step()  # the prefill step
        step = sched.step()
        assert step is not None and step.decode_seqs == concurrent and step.prefill_tokens == 0
        return step.seconds

    assert decode_step(1) < decode_step(16) < decode_step(128)


def test_abort_frees_the_slot_and_kv_at_once() -> None:
    sched = scheduler(max_num_seqs=1)
    sched.add(NewSequence("a", prompt("a", 40), output_tokens=100))
    sched.add(NewSequence("b", prompt("b", 40), output_tokens=1))
    sched.step()
    assert sched.kv_usage > 0 and sched.num_waiting == 1
    assert sched.abort("a") is True
    assert sched.num_running == 0 and sched.used_blocks == 0
    step = sched.step()
    assert step is not None and [(t.request_id, t.finished) for t in step.outputs] == [("b", True)]
    assert sched.abort("b") is False  # finished requests are gone


def test_sequences_that_can_never_fit_are_refused_up_front() -> None:
    sched = scheduler(kv_capacity_tokens=64, block_size=16)
    with pytest.raises(ValueError, match="exceed the KV cache"):
        sched.add(NewSequence("big", prompt("b", 60), output_tokens=10))


# --- prefix cache ------------------------------------------------------------------------------


def test_a_shared_prefix_is_not_prefilled_again() -> None:
    system = prompt("system", 480)
    sched = scheduler()
    sched.add(NewSequence("first", [*system, *prompt("q1-", 20)], output_tokens=1))
    (cold,) = run(sched)
    sched.add(NewSequence("second", [*system, *prompt("q2-", 20)], output_tokens=1))
    (warm,) = run(sched)
    assert cold.cache_hit_tokens == 0 and warm.cache_hit_tokens == 480
    assert warm.cache_queried_tokens == 500
    assert warm.prefill_tokens == 20 and cold.prefill_tokens == 500
    assert warm.seconds < cold.seconds


def test_only_a_common_prefix_hits_and_the_cache_is_bounded() -> None:
    sched = scheduler(kv_capacity_tokens=64, block_size=16)  # 4 blocks in all
    sched.add(NewSequence("a", prompt("a", 48), output_tokens=1))
    run(sched)
    # Same tokens after a different first block: no hit at all.
    sched.add(NewSequence("b", [*prompt("z", 16), *prompt("a", 48)[16:]], output_tokens=1))
    (b,) = run(sched)
    assert b.cache_hit_tokens == 0
    # b's blocks pushed a's oldest out of the 4-block cache.
    sched.add(NewSequence("a2", prompt("a", 48), output_tokens=1))
    (a2,) = run(sched)
    assert a2.cache_hit_tokens == 0


# --- KV cache pressure -------------------------------------------------------------------------


def test_kv_exhaustion_preempts_the_newest_and_everything_still_finishes() -> None:
    sched = scheduler(kv_capacity_tokens=128, block_size=16)  # 8 blocks
    for name in "abc":
        sched.add(NewSequence(name, prompt(name, 30), output_tokens=30))
    steps = run(sched)
    preempted = [rid for s in steps for rid in s.preempted]
    assert preempted and preempted[0] == "c"
    assert all(s.preempted == () or not s.cache_queried_tokens for s in steps)
    assert tokens_by_request(steps) == {n: list(range(30)) for n in "abc"}
    assert sched.used_blocks == 0 and sched.kv_usage == 0


def test_kv_usage_follows_held_blocks() -> None:
    sched = scheduler(kv_capacity_tokens=1600, block_size=16)
    sched.add(NewSequence("a", prompt("a", 160), output_tokens=5))
    sched.step()
    assert sched.kv_usage == pytest.approx(10 / 100)  # 160 prompt tokens: 10 blocks of 100
    sched.step()
    assert sched.kv_usage == pytest.approx(11 / 100)  # and the first output token: 11


# --- determinism -------------------------------------------------------------------------------


def test_the_same_requests_give_the_same_steps() -> None:
    def trace() -> list[Step]:
        sched = scheduler(kv_capacity_tokens=256, max_num_seqs=3, max_num_batched_tokens=48)
        for i in range(6):
            sched.add(NewSequence(f"r{i}", prompt("shared", 32) + prompt(f"u{i}", i * 7), 20 + i))
        return run(sched)

    assert trace() == trace()


def test_a_seeded_simulator_plans_and_writes_the_same_replies() -> None:
    body = {"messages": [{"role": "user", "content": "Tell me a story"}], "max_tokens": None}

    def replies(seed: int) -> list[tuple[int, str, str]]:
        sim = Simulator(SimConfig(model="m", seed=seed))
        out = []
        for _ in range(3):
            plan = sim.plan(parse_chat(body, "m"))
            text = "".join(next_piece(plan.rng) for _ in range(plan.output_tokens))
            out.append((plan.output_tokens, plan.finish_reason, text))
        return out

    assert replies(7) == replies(7)
    assert replies(7) != replies(8)
    assert len({r[2] for r in replies(7)}) == 3  # requests without a seed differ from each other


def test_a_request_seed_fixes_the_reply_whatever_the_simulator() -> None:
    body = {"messages": [{"role": "user", "content": "hi"}], "seed": 42}
    a = Simulator(SimConfig(model="m", seed=1)).plan(parse_chat(body, "m"))
    b = Simulator(SimConfig(model="m")).plan(parse_chat(body, "m"))
    assert a.output_tokens == b.output_tokens
    assert [next_piece(a.rng) for _ in range(10)] == [next_piece(b.rng) for _ in range(10)]


# --- tokens and replies ------------------------------------------------------------------------


def test_tokenizer_approximation() -> None:
    assert tokenize("Hello, world!") == ["Hello", ",", " world", "!"]
    assert len(tokenize("internationalization")) == 4  # 5 letters a token
    assert "".join(tokenize("a_b  c\n\nd 12345")) == "a_b  c\n\nd 12345"
    # Chat template: BOS, 4 header tokens + text + end-of-turn per message, 4 for the reply.
    assert len(chat_prompt_tokens([("user", "Hello, world!")])) == 1 + 4 + 4 + 1 + 4


def test_every_generated_piece_is_one_token() -> None:
    rng = request_rng(3, ["x"])
    assert all(len(tokenize(next_piece(rng))) == 1 for _ in range(500))


def test_reply_length_follows_max_tokens_else_ends_on_its_own() -> None:
    chat = parse_chat({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 7}, "m")
    assert plan_output(chat, 8192, natural_tokens=100) == (7, "length")
    free = parse_chat({"messages": [{"role": "user", "content": "hi"}]}, "m")
    assert plan_output(free, 8192, natural_tokens=100) == (100, "stop")
    assert plan_output(free, 20, natural_tokens=100) == (20 - len(free.prompt), "length")
    completion = parse_completion({"prompt": "hi"}, "m")
    assert plan_output(completion, 8192, natural_tokens=100) == (16, "length")
    with pytest.raises(ApiError, match="maximum context length is 15 tokens"):
        plan_output(chat, 15, natural_tokens=1)  # 11 prompt + 7 output tokens


def test_stop_strings_cut_the_text() -> None:
    checker = StopChecker(("END",))
    assert checker.push(" one") == " one"
    assert checker.push(" twoEN") == " twoEN"  # no holdback of a partial match
    assert checker.push("D three") == ""
    assert (checker.text, checker.stop_reason) == (" one two", "END")


# --- simulated GPU and faults ------------------------------------------------------------------


def gpu() -> SimulatedGpu:
    return SimulatedGpu(H100, uuid="GPU-1", weights_bytes=10, kv_bytes_per_token=2, now=0.0)


def test_gpu_follows_load_and_cools_when_idle() -> None:
    g = gpu()
    idle = g.reading()
    for t in range(1, 121):
        g.advance(float(t), busy_s=1.0, batch=64, kv_tokens=1000)
    loaded = g.reading()
    assert loaded.utilization_pct > 95 and loaded.power_w > idle.power_w * 5
    assert loaded.temperature_c > idle.temperature_c + 20
    assert loaded.memory_used_bytes == 10 + 2000
    g.advance(400.0, busy_s=0.0, batch=0, kv_tokens=0)
    cooled = g.reading()
    assert cooled.utilization_pct < 1 and cooled.temperature_c < loaded.temperature_c - 20


def test_thermal_runaway_heats_and_throttles() -> None:
    g = gpu()
    g.thermal_runaway = True
    g.advance(30.0, busy_s=0.0, batch=0, kv_tokens=0)
    reading = g.reading()
    assert reading.temperature_c > SLOWDOWN_TEMP_C and reading.thermal_throttle
    assert g.slowdown > 1


def test_fault_patches_are_validated() -> None:
    patch = parse_patch({"error_rate": 0.5, "thermal": True, "ecc_dbe": True, "ecc_sbe": 3})
    assert (patch.error_rate, patch.thermal, patch.ecc_dbe, patch.ecc_sbe) == (0.5, True, 1, 3)
    for bad, field in (
        ({"error_rate": 2}, "error_rate"),
        ({"slow_factor": 0}, "slow_factor"),
        ({"thermal": "yes"}, "thermal"),
        ({"ecc_dbe": -1}, "ecc_dbe"),
        ({"explode": True}, "explode"),
    ):
        with pytest.raises(FaultError) as caught:
            parse_patch(bad)
        assert caught.value.param == field
    assert returned_error_status(" 503") == 503
    with pytest.raises(FaultError):
        returned_error_status("200")
