"""What the gateway needs from the database, read in bulk and kept in memory for a few
seconds: API keys, deployments with their running replicas, region locations."""

import ipaddress
import math
import time
from dataclasses import dataclass, field

from django.conf import settings

from deployments.models import Deployment, DeploymentStatus, Region, Replica
from portal.models import ApiKey
from portal.tokens import api_key_digest, looks_like_api_key


@dataclass(frozen=True)
class Target:
    replica_id: int
    url: str
    region: str


@dataclass
class Route:
    deployment_id: int
    name: str
    organization_id: int
    status: str
    desired: int = 1
    targets: list[Target] = field(default_factory=list)


def key_lookup(raw: str) -> tuple | None:
    """(key identity for counters, organization id, requests/min, tokens/min) of an active
    key, or None. The identity is the digest's start: stable and unique across databases."""
    if not looks_like_api_key(raw):
        return None
    digest = api_key_digest(raw)
    row = (
        ApiKey.objects.filter(digest=digest, revoked_at=None, created_by__is_active=True)
        .values_list("organization_id", "requests_per_minute", "tokens_per_minute")
        .first()
    )
    return (digest[:24], *row) if row else None


def spend_blocked(organization_id: int) -> str:
    """Why the organization may not spend now (hard limit, past due), or ""."""
    from billing.models import BillingAccount
    from billing.services import spend_status
    from portal.models import Organization

    org = Organization.objects.get(pk=organization_id)
    status = (
        BillingAccount.objects.filter(organization=org).values_list("status", flat=True).first()
    )
    if status in {BillingAccount.Status.PAST_DUE, BillingAccount.Status.SUSPENDED}:
        return f"This organization's account is {status.replace('_', ' ')}."
    if spend_status(org)["hard"]:
        return "The organization's monthly spend limit is reached."
    return ""


def routes_for(organization_id: int) -> dict[str, Route]:
    routes = {
        d.name: Route(d.pk, d.name, d.organization_id, d.status, d.desired_replicas)
        for d in Deployment.objects.filter(
            organization_id=organization_id, deleted_at__isnull=True
        ).exclude(status=DeploymentStatus.DELETED)
    }
    by_id = {r.deployment_id: r for r in routes.values()}
    for replica_id, deployment_id, url, region in (
        Replica.objects.filter(deployment_id__in=list(by_id), status="running")
        .exclude(url="")
        .values_list("pk", "deployment_id", "url", "region__code")
    ):
        by_id[deployment_id].targets.append(Target(replica_id, url, region))
    return routes


def region_locations() -> dict[str, tuple[float, float]]:
    return {
        code: (lat, lon)
        for code, lat, lon in Region.objects.values_list("code", "latitude", "longitude")
    }


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


class Cache:
    """A value per key, reloaded after `ttl` seconds."""

    def __init__(self, ttl: float):
        self.ttl, self.items = ttl, {}

    def get(self, key):
        hit = self.items.get(key)
        if hit and time.monotonic() - hit[0] < self.ttl:
            return True, hit[1]
        return False, None

    def put(self, key, value):
        self.items[key] = (time.monotonic(), value)


def route_ttl() -> float:
    return float(getattr(settings, "GATEWAY_ROUTE_TTL_S", 2.0))
