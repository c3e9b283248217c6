"""Routing strategies as a user of the router sees them: where requests go, and why."""

from __future__ import annotations

import random
from collections import Counter
from importlib.metadata import EntryPoint
from typing import Any, ClassVar

import numpy as np
import pytest

from infermesh.agent.sim.wan import DEFAULT_RTT_MS, Location, Wan
from infermesh.model import ObjectMeta, Strategy, StrategySpec
from infermesh.router.replica import Replica
from infermesh.router.strategies import (
    BUILTINS,
    ENTRY_POINT_GROUP,
    BaselineRR,
    CandidateSet,
    Decision,
    HybridMesh,
    LeastQueue,
    LiveState,
    PowerOfTwo,
    PrefixAffinity,
    RequestContext,
    StrategyError,
    StrategyRegistry,
    origin_network,
)
from infermesh.router.strategies.network import link_class_name

EU = Location(domain="edge-eu", region="eu-west", zone="eu-west-1a")


def replica(i: int, **kw: Any) -> Replica:
    base: dict[str, Any] = {
        "node": f"n{i}",
        "url": f"http://127.0.0.1:{8100 + i}",
        "model": "chat@1",
        "slot": i,
        "domain": "edge-eu",
        "region": "eu-west",
        "zone": "eu-west-1a",
        "gpu": "H100",
    }
    return Replica(**{**base, **kw})


def fleet(n: int, **kw: Any) -> list[Replica]:
    return [replica(i, **kw) for i in range(n)]


def live_for(replicas: list[Replica]) -> LiveState:
    return LiveState.sized(max(r.slot for r in replicas) + 1, DEFAULT_RTT_MS)


def ctx(**kw: Any) -> RequestContext:
    return RequestContext(endpoint="chat", project="default", tenant="t", revision="chat@1", **kw)


def first_node(strategy: Any, replicas: list[Replica], live: LiveState, **kw: Any) -> str:
    cs = CandidateSet(replicas)
    decision = strategy.decide(ctx(**kw), cs, live)
    return cs.replicas[decision.ranked[0]].node


ALL = [BaselineRR, LeastQueue, PowerOfTwo, PrefixAffinity, HybridMesh]


# -- what every strategy does ---------------------------------------------------------------


@pytest.mark.parametrize("cls", ALL)
def test_an_ejected_replica_is_never_ranked_while_another_can_serve(cls: type) -> None:
    replicas = fleet(5)
    live = live_for(replicas)
    live.ejected[[0, 2, 3]] = True
    strategy = cls()
    for i in range(50):
        d = strategy.decide(ctx(prefix_key=i), CandidateSet(replicas), live)
        assert d.ranked and set(d.ranked) <= {1, 4}


@pytest.mark.parametrize("cls", ALL)
def test_with_every_replica_ejected_a_request_still_has_somewhere_to_go(cls: type) -> None:
    replicas = fleet(3)
    live = live_for(replicas)
    live.ejected[:] = True
    d = cls().decide(ctx(), CandidateSet(replicas), live)
    assert d.ranked


@pytest.mark.parametrize("cls", ALL)
def test_no_candidates_means_nowhere_to_go(cls: type) -> None:
    d = cls().decide(ctx(), CandidateSet([]), LiveState.sized(4, DEFAULT_RTT_MS))
    assert d.ranked == () and d.strategy == cls.name


@pytest.mark.parametrize("cls", ALL)
def test_large_sets_rank_at_least_rank_depth_distinct_candidates(cls: type) -> None:
    replicas = fleet(300)
    d = cls(rank_depth=6).decide(ctx(prefix_key=7), CandidateSet(replicas), live_for(replicas))
    assert len(d.ranked) >= 6 and len(set(d.ranked)) == len(d.ranked)


@pytest.mark.parametrize("cls", ALL)
def test_explain_has_one_entry_per_candidate(cls: type) -> None:
    replicas = fleet(4)
    d = cls().decide(ctx(explain=True), CandidateSet(replicas), live_for(replicas))
    assert d.explain is not None and len(d.explain) == 4
    assert all("load" in row for row in d.explain)


@pytest.mark.parametrize("cls", ALL)
def test_a_misspelt_param_names_itself_and_the_strategy(cls: type) -> None:
    with pytest.raises(StrategyError, match=rf"{cls.name}.*'net_penality'"):
        cls(net_penality=0.7)


def test_a_param_of_the_wrong_type_or_range_is_refused() -> None:
    with pytest.raises(StrategyError, match="'net_penalty' must be a finite number"):
        HybridMesh(net_penalty="high")
    with pytest.raises(StrategyError, match="'rank_depth' must be >= 1"):
        LeastQueue(rank_depth=0)
    with pytest.raises(StrategyError, match="'max_load_factor' must be >= 1"):
        PrefixAffinity(max_load_factor=0.5)


# -- the classic ones -----------------------------------------------------------------------


def test_baseline_rr_cycles_and_skips_ejected_replicas() -> None:
    replicas = fleet(3)
    live = live_for(replicas)
    rr = BaselineRR()
    assert [first_node(rr, replicas, live) for _ in range(6)] == ["n0", "n1", "n2"] * 2
    live.ejected[1] = True
    assert {first_node(rr, replicas, live) for _ in range(6)} == {"n0", "n2"}


def test_least_queue_avoids_a_replica_with_a_long_queue() -> None:
    replicas = [replica(0, running=8, waiting=30), replica(1, running=3), replica(2, running=5)]
    assert first_node(LeastQueue(), replicas, live_for(replicas)) == "n1"


def test_least_queue_counts_what_this_router_sent_before_the_agent_reports_it() -> None:
    replicas = [replica(0, running=1), replica(1, running=2)]
    live = live_for(replicas)
    live.inflight[0] = 9  # the agent's report lags: this router has 9 requests there
    assert first_node(LeastQueue(), replicas, live) == "n1"


def test_power_of_two_never_picks_the_busy_one_of_three_when_two_are_idle() -> None:
    replicas = [replica(0), replica(1, running=40, waiting=10), replica(2)]
    live = live_for(replicas)
    p2c = PowerOfTwo(seed=1)
    picks = Counter(first_node(p2c, replicas, live) for _ in range(300))
    assert picks["n1"] == 0 and picks["n0"] > 50 and picks["n2"] > 50


def test_power_of_two_with_a_seed_repeats_its_choices() -> None:
    replicas = fleet(20)
    live = live_for(replicas)
    picks = [
        [first_node(p2c, replicas, live) for _ in range(30)]
        for p2c in (PowerOfTwo(seed=3), PowerOfTwo(seed=3))
    ]
    assert picks[0] == picks[1]


def test_prefix_affinity_keeps_a_prefix_on_one_replica_whatever_the_order() -> None:
    replicas = fleet(8)
    live = live_for(replicas)
    pa = PrefixAffinity()
    home = first_node(pa, replicas, live, prefix_key=1234)
    shuffled = replicas[:]
    random.Random(5).shuffle(shuffled)
    assert first_node(pa, shuffled, live, prefix_key=1234) == home
    # Another router (another instance) agrees.
    assert first_node(PrefixAffinity(), replicas, live, prefix_key=1234) == home


def test_prefix_affinity_spreads_prefixes_over_the_replicas() -> None:
    replicas = fleet(8)
    live = live_for(replicas)
    homes = Counter(first_node(PrefixAffinity(), replicas, live, prefix_key=k) for k in range(400))
    assert len(homes) == 8 and max(homes.values()) < 100


def test_prefix_affinity_falls_back_to_the_session() -> None:
    replicas = fleet(8)
    live = live_for(replicas)
    pa = PrefixAffinity()
    homes = {first_node(pa, replicas, live, session_key=99) for _ in range(5)}
    assert len(homes) == 1


def test_prefix_affinity_moves_off_an_overloaded_replica_and_back() -> None:
    replicas = fleet(6, running=2)
    live = live_for(replicas)
    pa = PrefixAffinity()
    home = first_node(pa, replicas, live, prefix_key=42)
    slot = int(home[1:])
    live.inflight[slot] = 30  # far above 1.5 x the mean + 1
    moved = {first_node(pa, replicas, live, prefix_key=42) for _ in range(5)}
    assert len(moved) == 1 and home not in moved  # and always to the same next replica
    live.inflight[slot] = 0
    assert first_node(pa, replicas, live, prefix_key=42) == home


def test_prefix_affinity_without_a_key_goes_to_the_least_loaded() -> None:
    replicas = [replica(0, running=5), replica(1), replica(2, running=5)]
    assert first_node(PrefixAffinity(), replicas, live_for(replicas)) == "n1"


# -- hybrid_mesh (its score: test_router_hybrid.py) -----------------------------------------


def test_hybrid_is_the_network_aware_one() -> None:
    assert [c.name for c in ALL if c.network_aware] == ["hybrid_mesh@1.0"]


# -- network --------------------------------------------------------------------------------


def test_link_classes_from_an_origin() -> None:
    replicas = [
        replica(0),  # same zone
        replica(1, zone="eu-west-1b"),  # same region
        replica(2, domain="cloud-us", region="us-east", zone="us-east-1a"),
    ]
    cs, live = CandidateSet(replicas), live_for(replicas)

    def classes(origin: Location | None) -> list[str | None]:
        return [link_class_name(c) for c in origin_network(origin, cs, live).codes.tolist()]

    assert classes(EU) == ["intra-zone", "inter-zone", "inter-region"]
    assert classes(Location(domain="cloud-us")) == ["inter-region", "inter-region", "inter-zone"]
    assert classes(Location(domain="somewhere-else")) == ["public"] * 3
    assert classes(None) == [None] * 3
    assert origin_network(None, cs, live).rtt_ms.tolist() == [0.0] * 3


def test_rtts_follow_the_routers_figures() -> None:
    replicas = [replica(0, domain="cloud-us", region="us-east", zone="us-east-1a")]
    cs, live = CandidateSet(replicas), live_for(replicas)
    assert origin_network(EU, cs, live).rtt_ms.tolist() == [DEFAULT_RTT_MS["inter-region"]]
    live.rtt_ms = {**DEFAULT_RTT_MS, "inter-region": 140.0}
    assert origin_network(EU, cs, live).rtt_ms.tolist() == [140.0]


def test_the_simulated_wan_and_the_router_agree_on_link_classes() -> None:
    domain_regions = {"edge-eu": "eu-west", "cloud-us": "us-east"}
    here = Location("cloud-us", "us-east", "us-east-1a")
    wan = Wan(here, domain_regions)
    cs = CandidateSet([replica(0, domain="cloud-us", region="us-east", zone="us-east-1a")])
    live = live_for(list(cs.replicas))
    for origin in [EU, Location(domain="cloud-us"), Location(zone="us-east-1a"), Location("x")]:
        code = origin_network(origin, cs, live).codes[0]
        assert link_class_name(int(code)) == wan.link_class(origin)


# -- registry -------------------------------------------------------------------------------


class EchoStrategy:
    """A plugin: ranks the candidates as given."""

    name: ClassVar[str] = "echo@1.0"
    network_aware: ClassVar[bool] = False

    def __init__(self, **params: Any) -> None:
        self.params = params

    def decide(self, ctx: RequestContext, candidates: CandidateSet, live: LiveState) -> Decision:
        return Decision(tuple(range(len(candidates))), self.name)


class NotAStrategy:
    pass


def strategy_object(name: str, version: str = "1", **spec: Any) -> Strategy:
    spec.setdefault("kind", "inference")
    spec.setdefault("plugin", "builtin")
    return Strategy(
        metadata=ObjectMeta(name=name, resourceVersion=version), spec=StrategySpec(**spec)
    )


def test_builtins_resolve_by_exact_or_bare_name() -> None:
    registry = StrategyRegistry(plugins=[])
    for name, cls in BUILTINS.items():
        assert isinstance(registry.resolve(name, {}, {}), cls)
        assert isinstance(registry.resolve(name.split("@")[0], {}, {}), cls)


def test_a_strategy_objects_params_apply_and_the_endpoints_win() -> None:
    objects = {
        "hybrid_mesh@1.0": strategy_object(
            "hybrid_mesh@1.0", params={"net_penalty": 0.7, "cold_penalty": 0.2}
        )
    }
    s = StrategyRegistry(plugins=[]).resolve("hybrid_mesh@1.0", objects, {"net_penalty": 1.5})
    assert isinstance(s, HybridMesh)
    assert s.params["net_penalty"] == 1.5 and s.params["cold_penalty"] == 0.2


def test_a_named_object_can_tune_a_builtin() -> None:
    objects = {
        "eu-mesh": strategy_object("eu-mesh", entryPoint="hybrid_mesh@1.0", params={"hot_c": 80})
    }
    s = StrategyRegistry(plugins=[]).resolve("eu-mesh", objects, {})
    assert isinstance(s, HybridMesh) and s.params["hot_c"] == 80.0


def test_resolving_again_gives_the_same_strategy_until_the_object_changes() -> None:
    registry = StrategyRegistry(plugins=[])
    objects = {"least_queue@1.0": strategy_object("least_queue@1.0", "7")}
    first = registry.resolve("least_queue@1.0", objects, {})
    assert registry.resolve("least_queue@1.0", objects, {}) is first
    assert registry.resolve("least_queue@1.0", objects, {"rank_depth": 2}) is not first
    objects = {"least_queue@1.0": strategy_object("least_queue@1.0", "8")}
    assert registry.resolve("least_queue@1.0", objects, {}) is not first


def test_a_bad_param_fails_resolution_with_a_message_naming_it() -> None:
    registry = StrategyRegistry(plugins=[])
    objects = {"hybrid_mesh@1.0": strategy_object("hybrid_mesh@1.0", params={"netpenalty": 1})}
    for _ in range(2):  # the failure is remembered, and raised again each time
        with pytest.raises(StrategyError, match=r"hybrid_mesh@1\.0.*'netpenalty'"):
            registry.resolve("hybrid_mesh", objects, {})
    with pytest.raises(StrategyError, match="'cold_penalty' must be a finite number"):
        registry.resolve("hybrid_mesh@1.0", {}, {"cold_penalty": "lots"})


def test_python_plugins_from_strategy_objects_and_entry_points() -> None:
    objects = {
        "echo": strategy_object(
            "echo",
            plugin="python",
            entryPoint="tests.test_router_strategies:EchoStrategy",
            params={"depth": 3},
        )
    }
    registry = StrategyRegistry(
        plugins=[
            EntryPoint(
                "echo-ep@2.0", "tests.test_router_strategies:EchoStrategy", ENTRY_POINT_GROUP
            )
        ]
    )
    s = registry.resolve("echo", objects, {"mode": "x"})
    assert isinstance(s, EchoStrategy) and s.params == {"depth": 3, "mode": "x"}
    assert isinstance(registry.resolve("echo-ep", {}, {}), EchoStrategy)


@pytest.mark.parametrize(
    ("ref", "objects", "message"),
    [
        ("nope", {}, "no strategy named 'nope'"),
        ("ring@1.0", {}, "training strategy"),
        (
            "wasm-one",
            {"wasm-one": strategy_object("wasm-one", plugin="wasm", entryPoint="x.wasm")},
            "wasm plugins are not supported",
        ),
        (
            "broken",
            {
                "broken": strategy_object(
                    "broken", plugin="python", entryPoint="no_such_module_here:Thing"
                )
            },
            "Strategy 'broken'.*cannot import",
        ),
        (
            "odd",
            {
                "odd": strategy_object(
                    "odd", plugin="python", entryPoint="tests.test_router_strategies:NotAStrategy"
                )
            },
            "not a class with a decide",
        ),
        (
            "trainer",
            {"trainer": strategy_object("trainer", kind="training", entryPoint="ring@1.0")},
            "is a training strategy",
        ),
    ],
)
def test_unresolvable_strategies_say_why(
    ref: str, objects: dict[str, Strategy], message: str
) -> None:
    with pytest.raises(StrategyError, match=message):
        StrategyRegistry(plugins=[]).resolve(ref, objects, {})


def test_the_fallback_is_least_queue() -> None:
    assert isinstance(StrategyRegistry(plugins=[]).fallback(), LeastQueue)


def test_decisions_leave_the_candidate_set_and_live_state_alone() -> None:
    replicas = [replica(i, running=i, kv_cache_usage=0.5) for i in range(100)]
    cs, live = CandidateSet(replicas), live_for(replicas)
    live.ejected[3] = True
    before = (cs.kv.copy(), cs.agent_load.copy(), live.inflight.copy(), live.ejected.copy())
    for cls in ALL:
        cls().decide(ctx(origin=EU, prefix_key=5, explain=True), cs, live)
    after = (cs.kv, cs.agent_load, live.inflight, live.ejected)
    assert all(np.array_equal(a, b) for a, b in zip(before, after, strict=True))


@pytest.mark.parametrize("ejected_count", [2, 40])
@pytest.mark.parametrize("cls", ALL)
def test_ejected_replicas_stay_out_of_a_large_ranking(cls: type, ejected_count: int) -> None:
    replicas = [replica(i, running=i % 50) for i in range(300)]
    live = live_for(replicas)
    least_loaded = sorted(range(300), key=lambda i: i % 50)[:ejected_count]
    live.ejected[least_loaded] = True
    for key in range(20):
        d = cls().decide(ctx(prefix_key=key), CandidateSet(replicas), live)
        assert len(d.ranked) >= 4 and not set(d.ranked) & set(least_loaded)
