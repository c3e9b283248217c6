"""Which replicas may serve an endpoint: serving state, revision, domains, operator actions,
pins, data residency and allowed link classes."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from infermesh.model import Domain, Endpoint, parse_object
from infermesh.router.candidates import CandidateRules, eligible
from infermesh.router.replica import Replica

ANY = CandidateRules()
REGIONS = {"edge-eu": "EU", "cloud-eu": "EU", "cloud-us": "US", "lab": None}


def domain(name: str, residency: str | None) -> Domain:
    spec: dict[str, Any] = {"residency": {"region": residency}} if residency else {}
    found = parse_object(
        {"apiVersion": "v1", "kind": "Domain", "metadata": {"name": name}, "spec": spec}
    )
    assert isinstance(found, Domain)
    return found


DOMAINS = {name: domain(name, region) for name, region in REGIONS.items()}


def endpoint(domains: list[str], **spec: Any) -> Endpoint:
    weights = [100 // len(domains)] * len(domains)
    weights[0] += 100 - sum(weights)
    found = parse_object(
        {
            "apiVersion": "v1",
            "kind": "Endpoint",
            "metadata": {"name": "chat"},
            "spec": {
                "modelRef": "chat@1",
                "domains": [
                    {"name": d, "weight": w} for d, w in zip(domains, weights, strict=True)
                ],
                **spec,
            },
        }
    )
    assert isinstance(found, Endpoint)
    return found


def replica(node: str, domain: str = "edge-eu", **kw: Any) -> Replica:
    kw.setdefault("residency", REGIONS.get(domain))
    kw.setdefault("model", "chat@1")
    return Replica(node=node, url=f"http://{node}", slot=0, domain=domain, **kw)


def nodes(ep: Endpoint, replicas: list[Replica], rules: CandidateRules = ANY) -> list[str]:
    return [r.node for r in eligible(ep, "chat@1", replicas, DOMAINS, rules).candidates]


def test_only_serving_replicas_of_the_chosen_revision_in_the_endpoints_domains() -> None:
    replicas = [
        replica("ok"),
        replica("cordoned", cordoned=True),  # a cordon stops placements, not serving
        replica("not-ready", ready=False),
        replica("draining", draining=True),
        replica("quarantined", quarantined=True),
        replica("sick-runtime", runtime_healthy=False),
        replica("old", model="chat@0"),
        replica("elsewhere", domain="cloud-us"),
    ]
    found = eligible(endpoint(["edge-eu"]), "chat@1", replicas, DOMAINS, ANY)
    assert [r.node for r in found.candidates] == ["ok", "cordoned"]
    assert found.excluded == {
        "not-ready": "not serving: not Ready",
        "draining": "not serving: draining",
        "quarantined": "not serving: quarantined",
        "sick-runtime": "not serving: runtime unhealthy",
        "old": "serves chat@0, not chat@1",
        "elsewhere": "domain 'cloud-us' is not one of the endpoint's",
    }


def test_a_node_serving_two_revisions_is_a_candidate_for_the_one_asked() -> None:
    replicas = [replica("both", model="chat@0"), replica("both")]
    found = eligible(endpoint(["edge-eu"]), "chat@1", replicas, DOMAINS, ANY)
    assert [r.model for r in found.candidates] == ["chat@1"] and found.excluded == {}


def test_nodes_quarantined_for_the_endpoint_are_left_out() -> None:
    ep = endpoint(["edge-eu"], quarantinedNodes=[{"node": "bad", "reason": "wrong answers"}])
    found = eligible(ep, "chat@1", [replica("bad"), replica("good")], DOMAINS, ANY)
    assert [r.node for r in found.candidates] == ["good"]
    assert "quarantinedNodes" in found.excluded["bad"]


@pytest.mark.parametrize(
    ("pins", "expected"),
    [
        ([], ["a", "b", "c"]),
        ([{"node": "b"}], ["b"]),
        ([{"domain": "cloud-eu"}], ["c"]),
        ([{"node": "a"}, {"domain": "cloud-eu"}], ["a", "c"]),
    ],
)
def test_pins(pins: list[dict[str, str]], expected: list[str]) -> None:
    ep = endpoint(["edge-eu", "cloud-eu"], pins=pins)
    replicas = [replica("a"), replica("b"), replica("c", "cloud-eu")]
    assert nodes(ep, replicas) == expected


def test_an_eu_endpoint_never_reaches_a_non_eu_or_unknown_residency_node() -> None:
    replicas = [
        replica("eu"),
        replica("us-hosted", residency="US"),  # in an EU domain, but the node says US
        replica("unknown", residency=None),
        replica("lowercase", residency="eu"),
    ]
    found = eligible(endpoint(["edge-eu"]), "chat@1", replicas, DOMAINS, ANY)
    assert [r.node for r in found.candidates] == ["eu", "lowercase"]
    assert found.excluded["us-hosted"] == "residency US, the endpoint requires EU"
    assert found.excluded["unknown"] == "residency unknown, the endpoint requires EU"


def test_a_domains_own_residency_binds_its_replicas_in_a_mixed_endpoint() -> None:
    ep = endpoint(["edge-eu", "cloud-us"])
    replicas = [
        replica("eu"),
        replica("us", "cloud-us"),
        replica("eu-in-us", "cloud-us", residency="EU"),
    ]
    assert nodes(ep, replicas) == ["eu", "us"]


def test_policy_allowed_regions_narrow_residency() -> None:
    ep = endpoint(["edge-eu", "cloud-us"])
    eu_only = CandidateRules(allowed_regions=frozenset({"EU"}))
    assert nodes(ep, [replica("eu"), replica("us", "cloud-us")], eu_only) == ["eu"]
    # A domain with no residency of its own still obeys the policy.
    lab = endpoint(["lab"])
    replicas = [replica("lab-eu", "lab", residency="EU"), replica("lab-none", "lab")]
    assert nodes(lab, replicas, eu_only) == ["lab-eu"]
    assert nodes(lab, replicas) == ["lab-eu", "lab-none"]
    # Policy and domains that agree on nothing leave nothing.
    us_only = CandidateRules(allowed_regions=frozenset({"US"}))
    assert nodes(endpoint(["edge-eu"]), [replica("eu")], us_only) == []


def test_a_domain_without_a_domain_object_is_left_out() -> None:
    found = eligible(endpoint(["ghost"]), "chat@1", [replica("g", "ghost")], DOMAINS, ANY)
    assert found.candidates == []
    assert "no Domain object" in found.excluded["g"]


def test_allowed_link_classes() -> None:
    replicas = [
        replica("zone", link_classes=("intra-zone", "inter-zone")),
        replica("public", link_classes=("public",)),
        replica("unsaid"),
    ]
    rules = CandidateRules(allowed_link_classes=frozenset({"intra-zone", "inter-region"}))
    found = eligible(endpoint(["edge-eu"]), "chat@1", replicas, DOMAINS, rules)
    assert [r.node for r in found.candidates] == ["zone"]
    assert found.excluded["public"].startswith("link classes (public) not allowed")
    assert nodes(endpoint(["edge-eu"]), replicas) == ["zone", "public", "unsaid"]


# -- residency holds for any fleet ----------------------------------------------------------

residencies = st.sampled_from(["EU", "eu", "US", "APAC", None])
replicas_st = st.lists(
    st.builds(
        lambda i, d, res, serving, cordoned: Replica(
            node=f"n{i}",
            url=f"http://n{i}",
            model="chat@1",
            slot=i,
            domain=d,
            residency=res,
            ready=serving,
            cordoned=cordoned,
        ),
        st.integers(0, 50),
        st.sampled_from([*REGIONS, "ghost"]),
        residencies,
        st.booleans(),
        st.booleans(),
    ),
    max_size=30,
)


@settings(max_examples=300, deadline=None)
@given(
    replicas=replicas_st,
    endpoint_domains=st.lists(st.sampled_from(list(REGIONS)), min_size=1, max_size=4, unique=True),
    allowed=st.none() | st.frozensets(st.sampled_from(["EU", "US", "APAC"]), max_size=2),
    pin_domain=st.booleans(),
)
def test_no_replica_outside_the_residency_is_ever_eligible(
    replicas: list[Replica],
    endpoint_domains: list[str],
    allowed: frozenset[str] | None,
    pin_domain: bool,
) -> None:
    pins = [{"domain": endpoint_domains[-1]}] if pin_domain else []
    ep = endpoint(endpoint_domains, pins=pins)
    rules = CandidateRules(allowed_regions=allowed)
    found = eligible(ep, "chat@1", replicas, DOMAINS, rules)
    required = {REGIONS[d] for d in endpoint_domains} - {None}
    if allowed:
        required = required & allowed if required else set(allowed)
    resident = bool(required) or bool(allowed)
    for r in found.candidates:
        assert r.serving and r.domain in endpoint_domains
        residency = r.residency.upper() if r.residency else None
        if resident:
            assert residency in required  # an EU endpoint never reaches a non-EU node
        if REGIONS[r.domain] is not None:
            assert residency == REGIONS[r.domain]
        if pins:
            assert r.domain == endpoint_domains[-1]
    assert len(found.candidates) + len(found.excluded) <= len(replicas)
