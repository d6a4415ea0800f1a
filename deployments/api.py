"""REST API for regions and deployments. Thin: parse, check access, call services."""

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import status, viewsets
from rest_framework.decorators import action, api_view
from rest_framework.response import Response

from billing.selectors import gpu_hour_prices
from deployments import flags, selectors, services
from deployments.access import access_deployment, access_replica
from deployments.models import (
    Deployment,
    GpuType,
)
from deployments.placement import capacity_by_region_and_type
from deployments.playground import playground_token_mint
from deployments.serializers import (
    CapacityOut,
    DeploymentIn,
    DeploymentOut,
    EngineOut,
    EventOut,
    GpuTypeOut,
    PlaygroundTokenIn,
    PlaygroundTokenOut,
    QuotaOut,
    RegionOut,
    ReplicaLogOut,
    ScaleIn,
    ServingIn,
    TrafficOut,
)
from deployments.services.weights import deployment_weights_retry
from deployments.sources import source_deploy
from portal.access import require
from portal.converters import ID_PATTERN

# --- Output ---------------------------------------------------------------------------


# --- Input ----------------------------------------------------------------------------


# --- Views ----------------------------------------------------------------------------


@extend_schema(responses=RegionOut(many=True))
@api_view(["GET"])
def region_list(request):
    """Regions with their GPU pools and free capacity."""
    return Response(RegionOut(selectors.region_list(), many=True).data)


@extend_schema(responses=GpuTypeOut(many=True))
@api_view(["GET"])
def gpu_type_list(request):
    gpus = GpuType.objects.all()
    return Response(GpuTypeOut(gpus, many=True, context={"prices": gpu_hour_prices()}).data)


@extend_schema(responses=CapacityOut(many=True))
@api_view(["GET"])
def capacity(request):
    """Total, allocated and free GPUs per region and GPU type."""
    return Response(capacity_by_region_and_type())


@extend_schema(responses=EngineOut(many=True))
@api_view(["GET"])
def engine_list(request):
    """The engines and, per version, the flags a deployment may set (name, type, range or
    choices, and whether a tuning may vary it)."""
    return Response(
        [
            {
                "engine": engine,
                "versions": [
                    {"version": v, "flags": flags.schema_document(engine, v)} for v in versions
                ],
            }
            for engine, versions in flags.ENGINE_VERSIONS.items()
        ]
    )


class DeploymentViewSet(viewsets.GenericViewSet):
    serializer_class = DeploymentOut

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return Deployment.objects.none()
        return selectors.deployment_list(org=self.request.org)

    def list(self, request):
        require(request.membership, "deployments.view")
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response(DeploymentOut(page, many=True).data)

    def retrieve(self, request, pk=None):
        require(request.membership, "deployments.view")
        return Response(DeploymentOut(access_deployment(request.org, pk)).data)

    @extend_schema(request=DeploymentIn, responses={201: DeploymentOut})
    def create(self, request):
        require(request.membership, "deployments.manage")
        data = DeploymentIn(data=request.data)
        data.is_valid(raise_exception=True)
        v = dict(data.validated_data)
        source = v.pop("source")
        if source is None:
            v.pop("profile", None)
            deployment = services.deployment_create(
                organization=request.org, user=request.user, **v
            )
        else:
            deployment = source_deploy(
                field=source,
                org=request.org,
                user=request.user,
                value=v[source],
                profile=v["profile"] or None,
                regions=v.get("regions") or None,
                name=v["name"],
                min_replicas=v["min_replicas"],
                max_replicas=v["max_replicas"],
                replicas=v["replicas"],
                autoscale_target=v["autoscale_target"],
                scale_to_zero_after_s=v["scale_to_zero_after_s"],
            )
        return Response(DeploymentOut(deployment).data, status=status.HTTP_201_CREATED)

    @extend_schema(responses={204: None})
    def destroy(self, request, pk=None):
        deployment = access_deployment(request.org, pk)
        require(request.membership, "deployments.manage")
        services.deployment_delete(deployment=deployment)
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(request=ScaleIn, responses=DeploymentOut)
    @action(detail=True, methods=["post"])
    def scale(self, request, pk=None):
        deployment = access_deployment(request.org, pk)
        require(request.membership, "deployments.manage")
        data = ScaleIn(data=request.data)
        data.is_valid(raise_exception=True)
        services.deployment_scale(deployment=deployment, replicas=data.validated_data["replicas"])
        return Response(DeploymentOut(access_deployment(request.org, pk)).data)

    @extend_schema(request=ServingIn, responses=DeploymentOut)
    @action(detail=True, methods=["post"])
    def serving(self, request, pk=None):
        deployment = access_deployment(request.org, pk)
        require(request.membership, "deployments.manage")
        data = ServingIn(data=request.data)
        data.is_valid(raise_exception=True)
        unknown = (
            sorted(set(request.data) - set(ServingIn().fields))
            if isinstance(request.data, dict)
            else ["non_field_errors"]
        )
        if unknown:
            return Response({k: ["Not a serving setting."] for k in unknown}, status=400)
        services.deployment_serving_update(deployment=deployment, **data.validated_data)
        return Response(DeploymentOut(access_deployment(request.org, pk)).data)

    @extend_schema(responses=TrafficOut)
    @action(detail=True, methods=["get"])
    def traffic(self, request, pk=None):
        require(request.membership, "deployments.view")
        deployment = access_deployment(request.org, pk)
        return Response(TrafficOut(selectors.traffic_summary(deployment=deployment)).data)

    @extend_schema(request=None, responses=DeploymentOut)
    @action(detail=True, methods=["post"])
    def stop(self, request, pk=None):
        deployment = access_deployment(request.org, pk)
        require(request.membership, "deployments.manage")
        services.deployment_stop(deployment=deployment)
        return Response(DeploymentOut(access_deployment(request.org, pk)).data)

    @extend_schema(request=None, responses=DeploymentOut)
    @action(detail=True, methods=["post"])
    def start(self, request, pk=None):
        deployment = access_deployment(request.org, pk)
        require(request.membership, "deployments.manage")
        deployment = services.deployment_start(deployment=deployment)
        return Response(DeploymentOut(deployment).data)

    @extend_schema(request=PlaygroundTokenIn, responses={201: PlaygroundTokenOut})
    @action(detail=True, methods=["post"], url_path="playground-token")
    def playground_token(self, request, pk=None):
        """A short-lived token for this deployment only, for the member's own calls to the
        gateway (the playground's credential; never a management key)."""
        deployment = access_deployment(request.org, pk)
        require(request.membership, "playground.use")
        data = PlaygroundTokenIn(data=request.data)
        data.is_valid(raise_exception=True)
        minted = playground_token_mint(
            deployment=deployment, user=request.user, ttl_s=data.validated_data.get("ttl_s")
        )
        return Response(PlaygroundTokenOut(minted).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=None, responses=DeploymentOut)
    @action(detail=True, methods=["post"], url_path="weights/retry")
    def weights_retry(self, request, pk=None):
        """Fetch the deployment's weights again after the fetch failed."""
        deployment = access_deployment(request.org, pk)
        require(request.membership, "deployments.manage")
        deployment_weights_retry(deployment=deployment)
        return Response(DeploymentOut(access_deployment(request.org, pk)).data)

    @extend_schema(responses=EventOut(many=True))
    @action(detail=True, methods=["get"])
    def events(self, request, pk=None):
        require(request.membership, "deployments.view")
        deployment = access_deployment(request.org, pk)
        page = self.paginate_queryset(selectors.deployment_events(deployment=deployment))
        return self.get_paginated_response(EventOut(page, many=True).data)

    @extend_schema(
        parameters=[OpenApiParameter("tail", int, description="lines (default 200)")],
        responses=ReplicaLogOut,
    )
    @action(detail=True, methods=["get"], url_path=rf"replicas/(?P<replica_id>{ID_PATTERN})/logs")
    def logs(self, request, pk=None, replica_id=None):
        require(request.membership, "deployments.view")
        replica = access_replica(request.org, pk, replica_id)
        try:
            tail = int(request.query_params.get("tail", 200))
        except ValueError:
            return Response({"tail": ["Give a whole number."]}, status=400)
        return Response(
            {
                "replica": replica.pk,
                "status": replica.status,
                "log": services.replica_logs(replica=replica, tail=tail),
            }
        )


@extend_schema(responses=QuotaOut(many=True))
@api_view(["GET"])
def quotas(request):
    """The organization's limits, with what it uses of each (GPUs asked for by its
    deployments; deployments; this month's spend in cents)."""
    require(request.membership, "usage.view")
    return Response(QuotaOut(selectors.quota_usage(org=request.org), many=True).data)
