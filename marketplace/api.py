"""Catalog API. Deploying a catalog model (`model` in POST /api/v1/deployments) is served by
the deployments API through the source this app registers in `apps.py`."""

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, viewsets
from rest_framework.response import Response

from marketplace import selectors
from marketplace.access import access_catalog_model
from marketplace.fit import price_per_hour_cents
from marketplace.models import CatalogModel, ServingProfile


def _price(cents) -> str | None:
    return None if cents is None else f"{cents / 100:.2f}"


class ProfileOut(serializers.ModelSerializer):
    gpu_type = serializers.CharField(source="gpu_type.code")
    price_per_hour = serializers.SerializerMethodField(help_text="USD per hour per replica")

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
            "price_per_hour",
            "fits",
            "memory_required_gib",
            "memory_available_gib",
            "throughput_tokens_s",
            "throughput_source",
        ]

    def get_price_per_hour(self, p) -> str:
        return _price(price_per_hour_cents(p))


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
        return Response(ModelDetailOut(access_catalog_model(request.org, slug)).data)
