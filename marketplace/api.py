"""Catalog API. Deploying a catalog model (`model` in POST /api/v1/deployments) is served by
the deployments API through the source this app registers in `apps.py`."""

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, viewsets
from rest_framework.response import Response

from billing.selectors import gpu_hour_provenance
from marketplace import selectors
from marketplace.access import access_catalog_model
from marketplace.fit import price_per_hour_cents
from marketplace.launch import launch_or_reason
from marketplace.models import CatalogModel, ServingProfile


def _price(cents) -> str | None:
    return None if cents is None else f"{cents / 100:.2f}"


class ProfileOut(serializers.ModelSerializer):
    gpu_type = serializers.CharField(source="gpu_type.code")
    price_per_hour = serializers.SerializerMethodField(help_text="USD per hour per replica")
    price_source = serializers.SerializerMethodField(
        help_text="Where the GPU-hour price comes from, and its date"
    )
    launch = serializers.SerializerMethodField(
        help_text="The exact command a replica runs (secrets and per-replica parts elided)"
    )
    launch_engine_args = serializers.SerializerMethodField(
        help_text="The engine arguments a deployment of this profile passes"
    )
    launch_error = serializers.SerializerMethodField()
    engine_version = serializers.SerializerMethodField()

    class Meta:
        model = ServingProfile
        fields = [
            "id",
            "name",
            "engine",
            "gpu_type",
            "gpu_count",
            "quantization",
            "max_model_len",
            "concurrent_sequences",
            "engine_args",
            "engine_version",
            "tensor_parallel",
            "parallel_reason",
            "kv_cache_dtype",
            "launch",
            "launch_engine_args",
            "launch_error",
            "price_per_hour",
            "price_source",
            "fits",
            "fit_reason",
            "memory_required_gib",
            "memory_available_gib",
            "throughput_tokens_s",
            "throughput_source",
        ]

    def _launch(self, p):
        cache = self.context.setdefault("launches", {})
        if p.pk not in cache:
            cache[p.pk] = launch_or_reason(p)
        return cache[p.pk]

    def get_price_per_hour(self, p) -> str:
        return _price(price_per_hour_cents(p))

    def get_price_source(self, p) -> str:
        if "provenance" not in self.context:
            self.context["provenance"] = gpu_hour_provenance()
        return self.context["provenance"].get(p.gpu_type.code, "")

    def get_launch(self, p) -> list[str] | None:
        launch, _ = self._launch(p)
        return launch.argv if launch else None

    def get_launch_engine_args(self, p) -> list[str] | None:
        launch, _ = self._launch(p)
        return launch.engine_args if launch else None

    def get_launch_error(self, p) -> str:
        return self._launch(p)[1]

    def get_engine_version(self, p) -> str:
        launch, _ = self._launch(p)
        return launch.engine_version if launch else p.engine_version


class ModelOut(serializers.ModelSerializer):
    cheapest_price_per_hour = serializers.SerializerMethodField()
    private = serializers.SerializerMethodField()

    class Meta:
        model = CatalogModel
        fields = [
            "slug",
            "name",
            "family",
            "hf_repo",
            "parameters_b",
            "active_parameters_b",
            "context_length",
            "license",
            "gated",
            "tasks",
            "downloads",
            "likes",
            "cheapest_price_per_hour",
            "private",
        ]

    def get_cheapest_price_per_hour(self, m) -> str | None:
        cents = getattr(m, "cheapest_cents", None)
        if cents is None and not hasattr(m, "cheapest_cents"):
            cheapest = (
                selectors.profiles_priced().filter(model=m, fits=True).order_by("price_cents")
            )
            cents = cheapest.values_list("price_cents", flat=True).first()
        return _price(cents)

    def get_private(self, m) -> bool:
        return m.organization_id is not None


class ModelDetailOut(ModelOut):
    profiles = ProfileOut(many=True)

    class Meta(ModelOut.Meta):
        fields = [
            *ModelOut.Meta.fields,
            "description",
            "architecture",
            "num_layers",
            "hidden_size",
            "num_heads",
            "num_kv_heads",
            "head_dim",
            "attention",
            "kv_lora_rank",
            "qk_rope_head_dim",
            "sources",
            "profiles",
        ]


class CatalogViewSet(viewsets.GenericViewSet):
    serializer_class = ModelOut
    lookup_field = "slug"
    lookup_value_regex = r"[\w.-]+"

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return CatalogModel.objects.none()
        q = self.request.query_params
        return selectors.catalog_list(
            org=self.request.org,
            search=q.get("search", ""),
            family=q.get("family", ""),
            gpu_type=q.get("gpu_type", ""),
            task=q.get("task", ""),
            license=q.get("license", ""),
            engine=q.get("engine", ""),
            size=q.get("size", ""),
            sort=q.get("sort", "popular"),
        )

    @extend_schema(
        parameters=[
            OpenApiParameter(n, str)
            for n in ("search", "family", "gpu_type", "task", "license", "engine", "size", "sort")
        ]
    )
    def list(self, request):
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response(ModelOut(page, many=True).data)

    @extend_schema(responses=ModelDetailOut)
    def retrieve(self, request, slug=None):
        model = access_catalog_model(request.org, slug)
        return Response(ModelDetailOut(model, context={"request": request}).data)
