"""The route table: for one organization, each deployment by name with its running
replicas, read from the database in bulk and kept in memory for a few seconds
(GATEWAY_ROUTE_TTL_S). Only running replicas with a URL are targets; a deployment with none
is still a route, so the gateway can say why it cannot serve it (or wake it).
"""

from dataclasses import dataclass, field

from django.conf import settings

from deployments.engine_auth import engine_api_key
from deployments.models import Deployment, DeploymentStatus, Region, Replica


@dataclass(frozen=True)
class Target:
    replica_id: int
    url: str
    region: str
    # What the relay sends the engine to prove the request comes from the platform
    # (`Authorization: Bearer <replica secret>`, see deployments.engine_auth); empty only
    # for targets built by hand. Computed here, with the URL, so the relay never looks
    # anything up on the request path.
    secret: str = field(default="", repr=False)


@dataclass
class Route:
    deployment_id: int
    name: str
    organization_id: int
    status: str
    desired: int = 1
    asleep: bool = False  # put to sleep by the autoscaler: a request may wake it
    policy: str = "least_busy"  # how a replica is picked within a region (see routing)
    targets: list[Target] = field(default_factory=list)


def routes_for(organization_id: int) -> dict[str, Route]:
    routes = {
        d.name: Route(
            d.pk,
            d.name,
            d.organization_id,
            d.status,
            d.desired_replicas,
            d.asleep,
            d.routing_policy,
        )
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
        by_id[deployment_id].targets.append(
            Target(replica_id, url, region, secret=engine_api_key(replica_id))
        )
    return routes


def region_locations() -> dict[str, tuple[float, float]]:
    return {
        code: (lat, lon)
        for code, lat, lon in Region.objects.values_list("code", "latitude", "longitude")
    }


def route_ttl() -> float:
    return float(getattr(settings, "GATEWAY_ROUTE_TTL_S", 2.0))
