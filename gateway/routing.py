"""Which replica serves a request: the caller's organization's route table (cached), then
its running replicas ordered nearest region first, then fewest requests in flight from this
process, then replica id (so ties always break the same way).

The client's region comes from the `X-Gantry-Region` header or, failing that, from the
client address through GATEWAY_REGION_CIDRS ("10.1.0.0/16=eu-west,…").
"""

import ipaddress
import math
from collections import defaultdict

from django.conf import settings
from starlette.requests import Request

from gateway.cache import Cache
from gateway.db import db
from gateway.routes import Route, Target, region_locations, route_ttl, routes_for

LOCATIONS_TTL_S = 60.0


def distance_km(a: tuple[float, float], b: tuple[float, float]) -> float:
    lat1, lon1, lat2, lon2 = map(math.radians, (*a, *b))
    h = (
        math.sin((lat2 - lat1) / 2) ** 2
        + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    )
    return 6371 * 2 * math.asin(math.sqrt(h))


class CidrTable:
    """GATEWAY_REGION_CIDRS: "10.1.0.0/16=eu-west,192.168.0.0/16=us-east"."""

    def __init__(self, spec: str):
        self.rows = []
        for item in filter(None, (s.strip() for s in spec.split(","))):
            cidr, _, region = item.partition("=")
            self.rows.append((ipaddress.ip_network(cidr.strip(), strict=False), region.strip()))

    def region_of(self, ip: str) -> str:
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return ""
        for net, region in self.rows:
            if addr in net:
                return region
        return ""


class Router:
    def __init__(self):
        self.tables = Cache(ttl=route_ttl())
        self.locations = Cache(ttl=LOCATIONS_TTL_S)
        self.cidrs = CidrTable(getattr(settings, "GATEWAY_REGION_CIDRS", ""))
        # Requests this process has in flight per replica: the least-busy tie-break.
        self.in_flight: dict[int, int] = defaultdict(int)

    async def table(self, organization_id: int) -> dict[str, Route]:
        hit, value = self.tables.get(organization_id)
        if not hit:
            value = await db(routes_for)(organization_id)
            self.tables.put(organization_id, value)
        return value

    def forget(self, organization_id: int) -> None:
        """Read the organization's routes afresh next time (a replica failed or is awaited)."""
        self.tables.forget(organization_id)

    async def region_table(self) -> dict[str, tuple[float, float]]:
        hit, value = self.locations.get("all")
        if not hit:
            value = await db(region_locations)()
            self.locations.put("all", value)
        return value

    def client_region(self, request: Request) -> str:
        return request.headers.get("x-gantry-region") or self.cidrs.region_of(
            request.client.host if request.client else ""
        )

    async def ordered(self, request: Request, route: Route) -> list[Target]:
        where = await self.region_table()
        here = where.get(self.client_region(request))

        def key(t: Target):
            far = distance_km(here, where[t.region]) if here and t.region in where else 0.0
            return (round(far), self.in_flight[t.replica_id], t.replica_id)

        return sorted(route.targets, key=key)
