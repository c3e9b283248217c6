"""Which replicas may serve an endpoint revision: a pure filter over the router's view.

`eligible` applies the endpoint's and its policy's hard rules, in this order, and records for
each node left out the first rule it failed (for `explain` and for operators):

1. serving: Ready, not draining, not quarantined, runtime healthy (a cordon stops placements
   only, so a cordoned replica still serves);
2. the revision the traffic split chose;
3. one of the endpoint's domains (a domain without a Domain object is left out: its residency
   cannot be known);
4. not in the endpoint's quarantinedNodes;
5. its pins (a node pin: only that node; a domain pin: only that domain; several: their union);
6. residency: the residency regions of the endpoint's domains, intersected with the policy's
   allowedRegions when it has some, must include the replica's; a replica in a domain with a
   residency of its own must match it too. A replica whose residency is unknown never serves a
   resident endpoint (fail closed);
7. link classes: with the policy's allowedLinkClasses set, at least one of the replica's.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from infermesh.model import Domain, Endpoint
from infermesh.router.replica import Replica


@dataclass(frozen=True, slots=True)
class CandidateRules:
    """The policy's hard constraints on candidates."""

    allowed_regions: frozenset[str] | None = None  # residency regions; None or empty: anywhere
    allowed_link_classes: frozenset[str] = frozenset()  # empty: all


@dataclass(frozen=True, slots=True)
class Eligibility:
    candidates: list[Replica]
    excluded: dict[str, str] = field(default_factory=dict)  # node -> why it was left out


@dataclass(frozen=True, slots=True)
class _Constraints:
    """One endpoint's rules, resolved once for all its replicas."""

    revision: str
    domains: frozenset[str]  # the endpoint's
    domain_residency: Mapping[str, str | None]  # of those with a Domain object, casefolded
    quarantined: frozenset[str]
    pinned_nodes: frozenset[str]
    pinned_domains: frozenset[str]
    resident: frozenset[str] | None  # residency regions allowed; None: anywhere
    allowed_links: frozenset[str]


def eligible(
    endpoint: Endpoint,
    revision: str,
    replicas: Iterable[Replica],
    domains: Mapping[str, Domain],
    rules: CandidateRules,
) -> Eligibility:
    spec = endpoint.spec
    names = frozenset(d.name for d in spec.domains)
    domain_residency = {
        name: _fold(domains[name].spec.residency.region) for name in names if name in domains
    }
    resident = frozenset(r for r in domain_residency.values() if r is not None) or None
    if rules.allowed_regions:
        allowed = frozenset(f for r in rules.allowed_regions if (f := _fold(r)))
        resident = allowed if resident is None else resident & allowed
    rules_here = _Constraints(
        revision=revision,
        domains=names,
        domain_residency=domain_residency,
        quarantined=frozenset(q.node for q in spec.quarantinedNodes),
        pinned_nodes=frozenset(p.node for p in spec.pins if p.node is not None),
        pinned_domains=frozenset(p.domain for p in spec.pins if p.domain is not None),
        resident=resident,
        allowed_links=rules.allowed_link_classes,
    )
    candidates: list[Replica] = []
    excluded: dict[str, str] = {}
    for r in replicas:
        why = _exclusion(r, rules_here)
        if why is None:
            candidates.append(r)
        else:
            excluded.setdefault(r.node, why)
    # A node with an eligible replica is not "excluded" for serving another revision too.
    for r in candidates:
        excluded.pop(r.node, None)
    return Eligibility(candidates, excluded)


def _exclusion(r: Replica, c: _Constraints) -> str | None:
    """Why `r` may not serve, or None."""
    if not r.serving:
        state = [
            s
            for s, on in (
                ("not Ready", not r.ready),
                ("draining", r.draining),
                ("quarantined", r.quarantined),
                ("runtime unhealthy", not r.runtime_healthy),
            )
            if on
        ]
        return f"not serving: {', '.join(state)}"
    if r.model != c.revision:
        return f"serves {r.model}, not {c.revision}"
    if r.domain not in c.domains:
        return f"domain {r.domain!r} is not one of the endpoint's"
    if r.domain not in c.domain_residency:
        return f"domain {r.domain!r} has no Domain object, so its residency is unknown"
    if r.node in c.quarantined:
        return "quarantined for this endpoint (spec.quarantinedNodes)"
    if (c.pinned_nodes or c.pinned_domains) and not (
        r.node in c.pinned_nodes or r.domain in c.pinned_domains
    ):
        return "not pinned (spec.pins)"
    residency = _fold(r.residency)
    if c.resident is not None and residency not in c.resident:
        return f"residency {r.residency or 'unknown'}, the endpoint requires {_show(c.resident)}"
    own = c.domain_residency[r.domain]
    if own is not None and residency != own:
        return f"residency {r.residency or 'unknown'}, its domain requires {own.upper()}"
    if c.allowed_links and not c.allowed_links.intersection(r.link_classes):
        have = ", ".join(r.link_classes) or "none"
        return f"link classes ({have}) not allowed: {', '.join(sorted(c.allowed_links))}"
    return None


def _fold(region: str | None) -> str | None:
    return region.strip().casefold() if region and region.strip() else None


def _show(regions: frozenset[str]) -> str:
    return (
        " or ".join(sorted(r.upper() for r in regions)) if regions else "a region no policy allows"
    )
