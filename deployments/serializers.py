"""The deployments API's serializers: input ones only parse, output ones only present."""

from rest_framework import serializers

from billing.selectors import gpu_hour_prices
from deployments import selectors
from deployments.models import (
    LIVE_REPLICA_STATUSES,
    Deployment,
    DeploymentEvent,
    GpuType,
    Replica,
    WeightsFetch,
)
from deployments.sources import source_list


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


class QuotaOut(serializers.Serializer):
    name = serializers.CharField()
    region = serializers.CharField(allow_blank=True)
    gpu_type = serializers.CharField(allow_blank=True)
    limit = serializers.IntegerField(allow_null=True)
    used = serializers.IntegerField()
