"""WAN distance between a caller and a simulated node: the link class, and its round trip.

A fleet spans zones, regions and domains; a request that comes from elsewhere pays the round trip
of the link class between them before its first byte, as it would over a real WAN. The caller
says where it is with `X-InferMesh-Client-Zone`, `-Region` or `-Domain` (a router passes on its
own location); a caller that says nothing is treated as local.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

# Typical round trips (ms) per link class of seed 000; a fleet file may set its own.
DEFAULT_RTT_MS: dict[str, float] = {
    "intra-zone": 0.5,
    "inter-zone": 2.0,
    "inter-region": 70.0,
    "public": 120.0,
}


@dataclass(frozen=True)
class Location:
    domain: str | None = None
    region: str | None = None
    zone: str | None = None


@dataclass(frozen=True)
class Wan:
    """Where this node is, where each domain of its fleet is, and the RTT of each link class."""

    here: Location = Location()
    domain_regions: Mapping[str, str] = field(default_factory=dict)
    rtt_ms: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_RTT_MS))

    def link_class(self, caller: Location) -> str | None:
        """The link between the caller and this node; None for a caller that says nothing."""
        return link_class_between(caller, self.here, self.domain_regions)

    def delay_s(self, caller: Location) -> tuple[str | None, float]:
        link = self.link_class(caller)
        return link, (self.rtt_ms.get(link, 0.0) / 1000.0 if link else 0.0)


def link_class_between(
    caller: Location, here: Location, domain_regions: Mapping[str, str]
) -> str | None:
    """The link class between a caller and a node at `here` (the simulator and the router's
    network pricing share this rule); None for a caller that says nothing. A node whose region
    is unknown counts as another region: far is the safe guess."""
    region = caller.region or domain_regions.get(caller.domain or "")
    if caller.zone is not None and caller.zone == here.zone:
        return "intra-zone"
    if region is not None:
        here_region = here.region or domain_regions.get(here.domain or "")
        return "inter-zone" if region == here_region else "inter-region"
    if caller.domain is not None:  # a domain no node of the fleet is in
        return "public"
    return None


def caller_location(headers: Mapping[str, str]) -> Location:
    return Location(
        domain=headers.get("x-infermesh-client-domain"),
        region=headers.get("x-infermesh-client-region"),
        zone=headers.get("x-infermesh-client-zone"),
    )
