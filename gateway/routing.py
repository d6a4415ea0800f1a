"""Which replica serves a request: the caller's organization's route table (cached), then
its running replicas ordered nearest region first; within the nearest region, by the
deployment's routing policy:

* ``least_busy`` — fewest requests in flight from this process, then replica id (so ties
  always break the same way);
* ``prefix_affinity`` — requests whose prompts start alike (the same system prompt, the same
  conversation so far) go to the same replica, where the engine still holds that prefix in
  its prompt cache. A prefix (the prompt's first GATEWAY_PREFIX_CHARS characters) has a
  home replica (`affinity`): when the prefix is first seen, the replica with the fewest
  homes (then the least loaded), so each engine's cache holds its share; homes are
  shared by every gateway process through Redis. Load stays bounded: the home is passed over
  while taking the request would put it above both GATEWAY_PREFIX_LOAD_FACTOR × the
  region's mean load and the least loaded replica's load + GATEWAY_PREFIX_LOAD_SLACK (in
  flight from this process), and the least loaded replica takes the request — the
  prefix keeps its home, unless its home passed on MOVE_AFTER_SPILLS of its requests in a
  row: then the prefix moves to where they went (a replica added to a deployment takes
  over prefixes this way). A home that is no longer running is replaced as for a new
  prefix.

The client's region comes from the client address through GATEWAY_REGION_CIDRS
("10.1.0.0/16=eu-west,…"); from a trusted proxy (GATEWAY_TRUSTED_PROXIES), its
`X-Gantry-Region` header or the client address it forwards in `X-Forwarded-For`.
"""

import ipaddress
import json
import logging
import math
from collections import defaultdict

from django.conf import settings
from starlette.requests import Request

from gateway.affinity import Affinity
from gateway.cache import Cache
from gateway.db import db
from gateway.routes import Route, Target, region_locations, route_ttl, routes_for

log = logging.getLogger("gateway.routing")

LOCATIONS_TTL_S = 60.0


def distance_km(a: tuple[float, float], b: tuple[float, float]) -> float:
    lat1, lon1, lat2, lon2 = map(math.radians, (*a, *b))
    h = (
        math.sin((lat2 - lat1) / 2) ** 2
        + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    )
    return 6371 * 2 * math.asin(math.sqrt(h))


def networks(spec: str) -> list:
    return [
        ipaddress.ip_network(cidr, strict=False)
        for cidr in filter(None, (s.strip() for s in spec.split(",")))
    ]


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


def prefix_of(body: dict) -> str:
    """What requests sharing a prompt prefix have in common: the first characters of the
    rendered messages (chat) or of the prompt (completions), as the engine would read them
    in order — role and content of each message, system prompt first. Only as many
    messages are rendered as the prefix needs (a long conversation is not copied whole)."""
    limit = int(getattr(settings, "GATEWAY_PREFIX_CHARS", 1024))
    if isinstance(body.get("messages"), list):
        parts, size = [], 0
        for m in body["messages"]:
            if size >= limit:
                break
            if not isinstance(m, dict):
                continue
            content = m.get("content")
            if not isinstance(content, str):
                content = json.dumps(content, sort_keys=True)
            parts.append(f"<|{m.get('role', '')}|>{content}")
            size += len(parts[-1])
        text = "".join(parts)
    else:
        prompt = body.get("prompt", "")
        text = prompt if isinstance(prompt, str) else json.dumps(prompt)
    return text[:limit]


def bounded(order: list[Target], load: dict[int, int]) -> list[Target]:
    """`order` with the first replica whose load stays within the bound moved to the front:
    ceil(factor × mean load counting this request), never below the least loaded + slack.
    The factor governs at high load; the slack at low load, where a factor of the mean
    would spill a prefix over a difference of one or two requests — which costs the
    other replica a whole prompt read and room in its cache, more than waiting behind a
    few requests that find their prefixes cached (measured in bench/routing.py: with a
    slack of 1 or 2 such spills cascade — each cold read slows its replica, which
    spills more — and the TTFT gain over least-busy swings between 1.2× and 2.2× from
    run to run; with 4 nothing spills at that load, and it holds at 2.4×)."""
    factor = float(getattr(settings, "GATEWAY_PREFIX_LOAD_FACTOR", 1.25))
    slack = max(1, int(getattr(settings, "GATEWAY_PREFIX_LOAD_SLACK", 4)))
    total = sum(load[t.replica_id] for t in order) + 1
    least = min(load[t.replica_id] for t in order)
    bound = max(math.ceil(factor * total / len(order)), least + slack)
    for i, t in enumerate(order):
        if load[t.replica_id] + 1 <= bound:
            return [t, *order[:i], *order[i + 1 :]]
    return order


def _within(ip: str, nets: list) -> bool:
    if not nets:
        return False  # no list (the common case): nothing to parse
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return any(addr in net for net in nets)


class Router:
    def __init__(self, metrics=None, affinity: Affinity | None = None):
        self.metrics = metrics  # counts prefix-affinity outcomes when given
        self.affinity = affinity or Affinity()
        self.tables = Cache(ttl=route_ttl())
        self.locations = Cache(ttl=LOCATIONS_TTL_S)
        self.cidrs = CidrTable(getattr(settings, "GATEWAY_REGION_CIDRS", ""))
        self._trusted: tuple[str, list] = ("", [])
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

    def trusted(self) -> list:
        # Read through the settings each time (a string compare), parsed only on change.
        spec = getattr(settings, "GATEWAY_TRUSTED_PROXIES", "")
        if spec != self._trusted[0]:
            self._trusted = (spec, networks(spec))
        return self._trusted[1]

    def client_region(self, request: Request) -> str:
        """The region a request comes from. Its headers are believed only when it comes
        through a trusted proxy: anyone else could name any region (and jump a queue, or
        pull traffic to another continent) by sending `X-Gantry-Region` themselves."""
        peer = request.client.host if request.client else ""
        trusted = self.trusted()
        if not _within(peer, trusted):
            return self.cidrs.region_of(peer)
        if region := request.headers.get("x-gantry-region", "").strip():
            return region
        # X-Forwarded-For lists the hops in order; each proxy appends the address it saw.
        # The client is the last one no trusted proxy could have written.
        hops = [h.strip() for h in request.headers.get("x-forwarded-for", "").split(",")]
        client = next((h for h in reversed(hops) if h and not _within(h, trusted)), peer)
        return self.cidrs.region_of(client)

    async def ordered(self, request: Request, route: Route, prefix: str = "") -> list[Target]:
        where = await self.region_table()
        here = where.get(self.client_region(request))

        def far(t: Target) -> int:
            return round(distance_km(here, where[t.region]) if here and t.region in where else 0)

        order = sorted(
            route.targets, key=lambda t: (far(t), self.in_flight[t.replica_id], t.replica_id)
        )
        if route.policy != "prefix_affinity" or not prefix or len(order) < 2:
            return order
        # Affinity only within the nearest region: a cached prefix never pulls a request
        # to another continent. The other regions stay behind, as failover.
        nearest = [t for t in order if far(t) == far(order[0])]
        rest = order[len(nearest) :]
        if len(nearest) < 2:
            return order
        key = self.affinity.key(route.deployment_id, prefix)
        home = await self.affinity.home(key)
        ids = {t.replica_id: t for t in nearest}
        outcome = "affinity"
        if home not in ids:  # a new prefix, or its home stopped: a new home for it
            # The replica with the fewest homes, then the least loaded: each engine's cache
            # holds its own share of the prefixes (how busy a replica is at this instant
            # says little of how much it will have to hold), and the load bound below
            # still keeps a busy home from taking the request.
            first = min(
                nearest,
                key=lambda t: (
                    self.affinity.claims[t.replica_id],
                    self.in_flight[t.replica_id],
                    t.replica_id,
                ),
            )
            home = await self.affinity.claim(
                key, first.replica_id, move=home is not None, previous=home
            )
            outcome = "new"
            if home not in ids:  # claimed by a process that still sees a replica gone
                home = first.replica_id
        # The home first, then the rest least loaded first (`nearest` is in that order).
        own = [ids[home], *(t for t in nearest if t.replica_id != home)]
        picked = bounded(own, self.in_flight)
        if picked[0] is not own[0]:
            outcome = "spill"
            if self.affinity.spilled(key):  # its home stays too busy: it moves
                await self.affinity.claim(
                    key, picked[0].replica_id, move=True, previous=own[0].replica_id
                )
                outcome = "moved"
        elif outcome == "affinity":
            self.affinity.kept(key)
        if self.metrics is not None:
            self.metrics.prefix_routed.labels(str(route.deployment_id), outcome).inc()
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "prefix %s: home %s, %s to %s (in flight %s)",
                key[-8:],
                home,
                outcome,
                picked[0].replica_id,
                {t.replica_id: self.in_flight[t.replica_id] for t in nearest},
            )
        return [*picked, *rest]
