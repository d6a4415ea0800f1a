"""REST API for regions and deployments. Thin: parse, check access, call services."""

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status, viewsets
from rest_framework.decorators import action, api_view
from rest_framework.response import Response

from billing.selectors import gpu_hour_prices
from deployments import flags, selectors, services
from deployments.access import access_deployment, access_replica
from deployments.models import (
    LIVE_REPLICA_STATUSES,
    Deployment,
    DeploymentEvent,
    GpuType,
    Replica,
    WeightsFetch,
)
from deployments.placement import capacity_by_region_and_type
from deployments.playground import playground_token_mint
from deployments.services.weights import deployment_weights_retry
from deployments.sources import source_deploy, source_list
from portal.access import require
from portal.converters import ID_PATTERN

# --- Output ---------------------------------------------------------------------------


class PoolOut(serializers.Serializer):
    name = serializers.CharField()
    driver = serializers.CharField()
    gpu_type = serializers.CharField(source="gpu_type.code")
    gpus_total = serializers.SerializerMethodField()
    gpus_free = serializers.SerializerMethodField()
    healthy = serializers.BooleanField()

    def get_gpus_total(self, pool) -> int:
        return pool.gpus_total or 0

    def get_gpus_free(self, pool) -> int:
        return (pool.gpus_total or 0) - (pool.gpus_allocated or 0)


class RegionOut(serializers.Serializer):
    code = serializers.CharField()
    name = serializers.CharField()
    location = serializers.CharField()
    latitude = serializers.FloatField()
    longitude = serializers.FloatField()
    pools = PoolOut(many=True)


class GpuTypeOut(serializers.ModelSerializer):
    # The one price of a GPU-hour, from billing's rate table (what the ledger charges).
    price_per_hour_cents = serializers.SerializerMethodField()

    class Meta:
        model = GpuType
        fields = ["code", "name", "memory_gb", "price_per_hour_cents"]

    def get_price_per_hour_cents(self, gpu) -> int:
        prices = self.context.get("prices")
        if prices is None:
            prices = self.context["prices"] = gpu_hour_prices()
        return prices.get(gpu.code, 0)


class ReplicaOut(serializers.ModelSerializer):
    region = serializers.CharField(source="region.code")
    pool = serializers.CharField(source="pool.name")
    node = serializers.CharField(source="node.name")
    # Engines answer only the platform; where they listen is for staff, never tenants
    # (the key stays in the contract, null for them, and for anyone when the serializer
    # is given no request to tell).
    url = serializers.SerializerMethodField()

    class Meta:
        model = Replica
        fields = [
            "id",
            "ordinal",
            "region",
            "pool",
            "node",
            "gpus",
            "status",
            "url",
            "started_at",
            "ready_at",
            "exit_reason",
        ]

    def get_url(self, r) -> str | None:
        request = self.context.get("request")
        staff = bool(request and getattr(request.user, "is_staff", False))
        return (r.url or None) if staff else None


class WeightsOut(serializers.ModelSerializer):
    region = serializers.CharField(source="region.code")
    file = serializers.CharField(source="filename")
    percent = serializers.IntegerField()
    progress = serializers.CharField(source="progress_text")

    class Meta:
        model = WeightsFetch
        fields = [
            "region",
            "repo",
            "revision",
            "commit",
            "file",
            "status",
            "bytes_done",
            "bytes_total",
            "percent",
            "progress",
            "error",
        ]


class DeploymentOut(serializers.ModelSerializer):
    gpu_type = serializers.CharField(source="gpu_type.code")
    endpoint = serializers.SerializerMethodField()
    replicas = serializers.SerializerMethodField()
    # The hub weights it loads from the weights cache (null when none are fetched).
    weights = WeightsOut(allow_null=True, read_only=True)
    status_reason = serializers.CharField(source="reason_now", read_only=True)

    class Meta:
        model = Deployment
        fields = [
            "id",
            "name",
            "status",
            "status_reason",
            "endpoint",
            "engine",
            "image",
            "model_ref",
            "engine_args",
            "gpu_type",
            "gpus_per_replica",
            "min_replicas",
            "max_replicas",
            "desired_replicas",
            "regions",
            "autoscale_target",
            "autoscale_metric",
            "scale_up_window_s",
            "scale_down_window_s",
            "scale_to_zero_after_s",
            "routing_policy",
            "replicas",
            "weights",
            "created_at",
            "updated_at",
        ]

    def get_endpoint(self, d) -> str | None:
        return selectors.endpoint_of(d)

    def get_replicas(self, d) -> list[dict]:
        replicas = getattr(d, "live_replicas", None)
        if replicas is None:
            replicas = (
                d.replicas.filter(status__in=LIVE_REPLICA_STATUSES)
                .select_related("region", "pool", "node")
                .order_by("ordinal")
            )
        return ReplicaOut(replicas, many=True, context=self.context).data


class CapacityOut(serializers.Serializer):
    region = serializers.CharField()
    region_name = serializers.CharField()
    gpu_type = serializers.CharField()
    total = serializers.IntegerField()
    allocated = serializers.IntegerField()
    free = serializers.IntegerField()


class ReplicaLogOut(serializers.Serializer):
    replica = serializers.IntegerField()
    status = serializers.CharField()
    log = serializers.CharField()


class EventOut(serializers.ModelSerializer):
    replica = serializers.IntegerField(source="replica_id", allow_null=True)

    class Meta:
        model = DeploymentEvent
        fields = ["at", "kind", "message", "replica"]


class LatencyOut(serializers.Serializer):
    ttft_p50_ms = serializers.IntegerField(allow_null=True)
    ttft_p95_ms = serializers.IntegerField(allow_null=True)
    itl_p50_ms = serializers.IntegerField(allow_null=True)
    itl_p95_ms = serializers.IntegerField(allow_null=True)
    requests_per_s = serializers.FloatField()
    tokens_per_s = serializers.FloatField()


class ReplicaTrafficOut(LatencyOut):
    replica = serializers.IntegerField()
    requests = serializers.IntegerField()


class TrafficOut(LatencyOut):
    requests = serializers.IntegerField()
    errors = serializers.IntegerField()
    p50_ms = serializers.IntegerField(allow_null=True)
    p95_ms = serializers.IntegerField(allow_null=True)
    replicas = ReplicaTrafficOut(many=True)


# --- Input ----------------------------------------------------------------------------


class ServingIn(serializers.Serializer):
    """Only parses: the service checks every value (choices, ranges) and names the field."""

    routing_policy = serializers.JSONField(required=False)
    autoscale_metric = serializers.JSONField(required=False)
    autoscale_target = serializers.JSONField(required=False)
    scale_up_window_s = serializers.JSONField(required=False)
    scale_down_window_s = serializers.JSONField(required=False)


# Fields that describe the engine itself. With a deployment source (`model`, `build`) the
# source's profile sets them, so giving them too is a contradiction, refused.
ENGINE_FIELDS = ("engine", "image", "model_ref", "engine_args", "gpu_type", "gpus_per_replica")
RAW_REQUIRED = ("name", "model_ref", "gpu_type", "regions")


class DeploymentIn(serializers.Serializer):
    """A registered source (`model`, `build`) with an optional `profile`; or the raw engine
    fields."""

    name = serializers.CharField(max_length=63, required=False, allow_blank=True, default="")
    profile = serializers.CharField(
        required=False, allow_blank=True, default="", help_text="with model or build"
    )
    engine = serializers.CharField(required=False, default="llama.cpp")
    image = serializers.CharField(required=False, allow_blank=True, default="")
    model_ref = serializers.CharField(max_length=255, required=False)
    engine_args = serializers.ListField(child=serializers.CharField(), required=False, default=list)
    gpu_type = serializers.CharField(required=False)
    gpus_per_replica = serializers.IntegerField(required=False, default=1)
    min_replicas = serializers.IntegerField(required=False, default=1)
    max_replicas = serializers.IntegerField(required=False, default=1)
    replicas = serializers.IntegerField(required=False, allow_null=True, default=None)
    regions = serializers.ListField(child=serializers.CharField(), required=False)
    autoscale_target = serializers.IntegerField(required=False, allow_null=True, default=None)
    scale_to_zero_after_s = serializers.IntegerField(required=False, allow_null=True, default=None)

    def get_fields(self):
        fields = super().get_fields()
        for source in source_list():
            fields[source.field] = serializers.CharField(
                required=False, max_length=255, help_text=source.help_text
            )
        return fields

    def validate(self, attrs):
        given = [s.field for s in source_list() if attrs.get(s.field) not in (None, "")]
        if len(given) > 1:
            message = f"Give one of {' or '.join(given)}, not both."
            raise serializers.ValidationError({f: [message] for f in given})
        sent = set(self.initial_data or {})
        if given:
            clash = [f for f in ENGINE_FIELDS if f in sent]
            if clash:
                message = f"Set by {given[0]}'s profile; leave it out when deploying a {given[0]}."
                raise serializers.ValidationError({f: [message] for f in clash})
            if "regions" in sent and not attrs.get("regions"):
                raise serializers.ValidationError({"regions": ["Give at least one region code."]})
            attrs["source"] = given[0]
            return attrs
        if attrs.get("profile"):
            names = " or ".join(s.field for s in source_list()) or "a deployment source"
            raise serializers.ValidationError({"profile": [f"A profile goes with {names}."]})
        if not sent & {*RAW_REQUIRED, *ENGINE_FIELDS} - {"name"}:
            names = ", ".join(f"{s.field} ({s.help_text})" for s in source_list())
            message = f"Give {names}, or the engine fields (model_ref, gpu_type, regions)."
            raise serializers.ValidationError({"non_field_errors": [message]})
        missing = {f: ["This field is required."] for f in RAW_REQUIRED if not attrs.get(f)}
        if missing:
            raise serializers.ValidationError(missing)
        attrs["source"] = None
        return attrs


class ScaleIn(serializers.Serializer):
    replicas = serializers.IntegerField()


class WholeNumberField(serializers.IntegerField):
    """A JSON number only: "600" (a string), 600.5 or true are refused, never coerced."""

    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, int):
            self.fail("invalid")
        return super().to_internal_value(data)


class PlaygroundTokenIn(serializers.Serializer):
    ttl_s = WholeNumberField(
        required=False, help_text="seconds it lives (default and most: PLAYGROUND_TOKEN_TTL_S)"
    )

    def validate(self, attrs):
        unknown = sorted(set(self.initial_data or {}) - set(self.fields))
        if unknown:
            raise serializers.ValidationError(
                {f: [f"Unknown field; allowed: {', '.join(self.fields)}."] for f in unknown}
            )
        return attrs


class PlaygroundTokenOut(serializers.Serializer):
    token = serializers.CharField(help_text="gp_…: send as `Authorization: Bearer` to the gateway")
    expires_at = serializers.IntegerField(help_text="Unix time")
    ttl_s = serializers.IntegerField()
    deployment = serializers.IntegerField()
    model = serializers.CharField()
    base_url = serializers.CharField()
    waking = serializers.BooleanField()
    wake_estimate_s = serializers.IntegerField()


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


class EngineFlagOut(serializers.Serializer):
    name = serializers.CharField()
    type = serializers.CharField()
    min = serializers.FloatField(allow_null=True)
    max = serializers.FloatField(allow_null=True)
    choices = serializers.ListField(child=serializers.CharField())
    help = serializers.CharField()
    tunable = serializers.BooleanField()
    aliases = serializers.ListField(child=serializers.CharField())


class EngineVersionOut(serializers.Serializer):
    version = serializers.CharField()
    flags = EngineFlagOut(many=True)


class EngineOut(serializers.Serializer):
    engine = serializers.CharField()
    versions = EngineVersionOut(many=True)


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


class QuotaOut(serializers.Serializer):
    name = serializers.CharField()
    region = serializers.CharField(allow_blank=True)
    gpu_type = serializers.CharField(allow_blank=True)
    limit = serializers.IntegerField(allow_null=True)
    used = serializers.IntegerField()


@extend_schema(responses=QuotaOut(many=True))
@api_view(["GET"])
def quotas(request):
    """The organization's limits, with what it uses of each (GPUs asked for by its
    deployments; deployments; this month's spend in cents)."""
    require(request.membership, "usage.view")
    return Response(QuotaOut(selectors.quota_usage(org=request.org), many=True).data)
