"""REST API for builds and uploads. Thin: parse, check access, call the services."""

from drf_spectacular.utils import extend_schema
from rest_framework import parsers, serializers, status, viewsets
from rest_framework.response import Response

from builder import selectors, services, submit, weights
from builder.access import access_build
from builder.models import Build, Upload, WeightsCache
from portal.access import require


class BuildOut(serializers.ModelSerializer):
    log_tail = serializers.SerializerMethodField()
    model = serializers.SerializerMethodField()
    weights = serializers.SerializerMethodField()

    class Meta:
        model = Build
        fields = [
            "id",
            "name",
            "status",
            "phase",
            "source_kind",
            "repo_id",
            "revision",
            "resolved_revision",
            "engine",
            "engine_version",
            "quantization",
            "max_context",
            "options",
            "env",
            "facts",
            "log_tail",
            "image",
            "digest",
            "spec_hash",
            "error",
            "model",
            "weights",
            "created_at",
            "started_at",
            "finished_at",
        ]

    def get_log_tail(self, b) -> str:
        return "\n".join(b.log.splitlines()[-40:])

    def get_model(self, b) -> str | None:
        return b.catalog_model.slug if b.catalog_model_id else None

    def get_weights(self, b) -> dict | None:
        cache = WeightsCache.objects.filter(key=weights.cache_key(b)).first()
        if cache is None:
            return None
        return {
            "status": cache.status,
            "bytes_done": cache.bytes_done,
            "bytes_total": cache.bytes_total,
            "error": cache.error,
        }


class SourceIn(serializers.Serializer):
    kind = serializers.ChoiceField(choices=Build.Source.choices)
    repo_id = serializers.CharField(required=False, allow_blank=True, default="")
    revision = serializers.CharField(required=False, allow_blank=True, default="")
    token = serializers.CharField(required=False, allow_blank=True, default="", write_only=True)
    upload = serializers.IntegerField(required=False, allow_null=True, default=None)
    path = serializers.CharField(required=False, allow_blank=True, default="")


class BuildIn(serializers.Serializer):
    name = serializers.CharField(max_length=60)
    source = SourceIn()
    engine = serializers.CharField(required=False, allow_blank=True, default="")
    engine_version = serializers.CharField(required=False, allow_blank=True, default="")
    quantization = serializers.CharField(required=False, allow_blank=True, default="")
    max_context = serializers.IntegerField(required=False, allow_null=True, default=None)
    options = serializers.DictField(required=False, default=dict)
    env = serializers.DictField(required=False, default=dict)


class UploadOut(serializers.ModelSerializer):
    class Meta:
        model = Upload
        fields = ["id", "kind", "name", "size_bytes", "sha256", "created_at"]


class BuildViewSet(viewsets.GenericViewSet):
    serializer_class = BuildOut

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return Build.objects.none()
        return selectors.build_list(org=self.request.org)

    def list(self, request):
        require(request.membership, "builds.view")
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response(BuildOut(page, many=True).data)

    def retrieve(self, request, pk=None):
        require(request.membership, "builds.view")
        return Response(BuildOut(access_build(request.org, pk)).data)

    @extend_schema(request=BuildIn, responses={201: BuildOut})
    def create(self, request):
        """Inspect the source, validate the spec and queue the build, in one call."""
        require(request.membership, "builds.manage")
        data = BuildIn(data=request.data)
        data.is_valid(raise_exception=True)
        v, src = data.validated_data, data.validated_data["source"]
        build = submit.build_submit(
            organization=request.org,
            user=request.user,
            name=v["name"],
            source_kind=src["kind"],
            repo_id=src["repo_id"],
            revision=src["revision"],
            token=src["token"],
            upload_id=src["upload"],
            path=src["path"],
            spec={k: v[k] for k in ("engine", "engine_version", "quantization", "max_context")}
            | {"options": v["options"], "env": v["env"]},
        )
        return Response(BuildOut(build).data, status=status.HTTP_201_CREATED)


class UploadViewSet(viewsets.GenericViewSet):
    serializer_class = UploadOut
    parser_classes = [parsers.MultiPartParser]

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return Upload.objects.none()
        return selectors.upload_list(org=self.request.org)

    @extend_schema(
        request={
            "multipart/form-data": {
                "type": "object",
                "properties": {
                    "files": {"type": "array", "items": {"type": "string", "format": "binary"}}
                },
            }
        },
        responses={201: UploadOut},
    )
    def create(self, request):
        require(request.membership, "builds.manage")
        upload = services.upload_create(
            organization=request.org, user=request.user, files=request.FILES.getlist("files")
        )
        return Response(UploadOut(upload).data, status=status.HTTP_201_CREATED)
