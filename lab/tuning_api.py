"""REST API for tunings and the leaderboard. Thin: parse, check access, call the services
(lab.tunings, lab.leaderboard) and the selectors the pages use too."""

import json

from django.core.exceptions import PermissionDenied, ValidationError
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_field
from rest_framework import serializers, status, viewsets
from rest_framework.decorators import action, api_view, parser_classes
from rest_framework.exceptions import ParseError
from rest_framework.parsers import MultiPartParser
from rest_framework.response import Response

from deployments.api import DeploymentOut
from lab import leaderboard as board
from lab import tuning_selectors as sel
from lab import tunings
from lab.models import LeaderboardEntry, Tuning
from portal.access import require
from portal.parsers import JSONObjectParser

# --- Input ----------------------------------------------------------------------------


class TuningIn(serializers.Serializer):
    """Shapes are checked by the service (one set of rules for the page and the API); here
    only that each field is there, of the right JSON kind."""

    model = serializers.CharField(required=False, allow_blank=True, max_length=100)
    build = serializers.JSONField(required=False)
    gpu_types = serializers.JSONField()
    objective = serializers.CharField(max_length=40)
    slo = serializers.JSONField(required=False)
    budget = serializers.JSONField()
    workload = serializers.JSONField(required=False)
    load = serializers.JSONField(required=False)
    space = serializers.JSONField(required=False)


class DeployIn(serializers.Serializer):
    name = serializers.CharField(required=False, allow_blank=True, max_length=63, default="")
    regions = serializers.ListField(
        child=serializers.CharField(max_length=32), required=False, max_length=16
    )


# --- Output ---------------------------------------------------------------------------


class TrialOut(serializers.Serializer):
    number = serializers.IntegerField()
    state = serializers.CharField()
    gpu_type = serializers.CharField()
    params = serializers.DictField()
    launch = serializers.ListField(child=serializers.CharField())
    value = serializers.FloatField(allow_null=True)
    note = serializers.CharField()
    warm_start = serializers.BooleanField()
    points = serializers.ListField(child=serializers.DictField())
    benchmark = serializers.IntegerField(allow_null=True)
    deployment = serializers.IntegerField(allow_null=True)
    gpu_seconds = serializers.FloatField()
    started_at = serializers.DateTimeField()
    finished_at = serializers.DateTimeField(allow_null=True)


class TuningOut(serializers.ModelSerializer):
    model = serializers.SerializerMethodField()
    best = serializers.SerializerMethodField()

    class Meta:
        model = Tuning
        fields = [
            "id",
            "model",
            "build",
            "engine",
            "engine_version",
            "gpu_types",
            "objective",
            "slo",
            "budget",
            "workload",
            "load",
            "space",
            "status",
            "phase",
            "progress",
            "stop_reason",
            "gpu_seconds",
            "best",
            "deployed",
            "published_profile",
            "created_at",
            "finished_at",
        ]

    def get_model(self, t) -> str:
        return t.catalog_model.slug if t.catalog_model else t.model_label

    @extend_schema_field(TrialOut(allow_null=True))
    def get_best(self, t) -> dict | None:
        if t.best_trial is None:
            return None
        return sel.trial_summary(t, t.best_trial)


class EntryOut(serializers.ModelSerializer):
    class Meta:
        model = LeaderboardEntry
        fields = [
            "id",
            "source",
            "model",
            "family",
            "engine",
            "engine_version",
            "gpu_type",
            "gpu_count",
            "objective",
            "launch",
            "output_tokens_per_s",
            "ttft_p95_ms",
            "itl_p95_ms",
            "cost_per_1m_output_tokens",
            "slo",
            "provenance",
            "measured_at",
        ]


class ParetoPointOut(serializers.Serializer):
    trial = serializers.IntegerField()
    concurrency = serializers.IntegerField(allow_null=True)
    tps_per_gpu = serializers.FloatField()
    tps_per_user = serializers.FloatField()
    meets_slo = serializers.BooleanField()


class TuningDetailOut(TuningOut):
    log_tail = serializers.CharField()
    trials = TrialOut(many=True)
    pareto = ParetoPointOut(many=True)
    why_best = serializers.CharField()

    class Meta(TuningOut.Meta):
        fields = [*TuningOut.Meta.fields, "log_tail", "trials", "pareto", "why_best"]


class PublishOut(serializers.Serializer):
    model = serializers.CharField()
    profile = serializers.CharField()
    gpu_type = serializers.CharField()
    launch = serializers.ListField(child=serializers.CharField())
    throughput_tokens_s = serializers.IntegerField()
    measured = serializers.DictField()


def _detail(t: Tuning) -> dict:
    trials = sel.trials_of(t)
    _points, front = sel.pareto_points(t, trials)
    return {
        **TuningOut(t).data,
        "log_tail": t.log[-4000:],
        "trials": [sel.trial_summary(t, x) for x in trials],
        "pareto": front,
        "why_best": sel.why_best(t, trials),
    }


# --- Views ----------------------------------------------------------------------------


class TuningViewSet(viewsets.GenericViewSet):
    serializer_class = TuningOut

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return Tuning.objects.none()
        return sel.tuning_list(org=self.request.org).select_related("catalog_model")

    def list(self, request):
        require(request.membership, "lab.view")
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response(TuningOut(page, many=True).data)

    @extend_schema(responses=TuningDetailOut)
    def retrieve(self, request, pk=None):
        require(request.membership, "lab.view")
        return Response(_detail(sel.access_tuning(request.org, pk)))

    @extend_schema(request=TuningIn, responses={201: TuningDetailOut})
    def create(self, request):
        require(request.membership, "lab.manage")
        data = TuningIn(data=request.data)
        data.is_valid(raise_exception=True)
        tuning = tunings.tuning_create(
            organization=request.org, user=request.user, **data.validated_data
        )
        return Response(_detail(tuning), status=status.HTTP_201_CREATED)

    @extend_schema(request=None, responses=TuningOut)
    @action(detail=True, methods=["post"])
    def cancel(self, request, pk=None):
        tuning = sel.access_tuning(request.org, pk)
        require(request.membership, "lab.manage")
        return Response(TuningOut(tunings.tuning_cancel(tuning=tuning)).data)

    @extend_schema(request=DeployIn, responses={201: DeploymentOut})
    @action(detail=True, methods=["post"])
    def deploy(self, request, pk=None):
        tuning = sel.access_tuning(request.org, pk)
        require(request.membership, "deployments.manage")
        data = DeployIn(data=request.data)
        data.is_valid(raise_exception=True)
        deployment = tunings.tuning_deploy(
            tuning=tuning,
            user=request.user,
            name=data.validated_data["name"],
            regions=data.validated_data.get("regions"),
        )
        return Response(DeploymentOut(deployment).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=None, responses=PublishOut)
    @action(detail=True, methods=["post"])
    def publish(self, request, pk=None):
        tuning = sel.access_tuning(request.org, pk)
        if not tunings.can_publish(request.user):
            raise PermissionDenied("Only staff or catalog maintainers publish tuned profiles.")
        profile = tunings.tuning_publish(tuning=tuning, user=request.user)
        return Response(
            {
                "model": profile.model.slug,
                "profile": profile.name,
                "gpu_type": profile.gpu_type.code,
                "launch": profile.engine_args,
                "throughput_tokens_s": profile.throughput_tokens_s,
                "measured": profile.measured,
            }
        )


class LeaderboardRowOut(serializers.Serializer):
    model = serializers.CharField()
    family = serializers.CharField()
    gpu_type = serializers.CharField()
    engine = serializers.CharField()
    results = serializers.IntegerField()
    best_throughput = EntryOut()
    best_cost = EntryOut(allow_null=True)


def _filters(request) -> dict:
    return {k: request.query_params.get(k, "") for k in board.FILTERS}


@extend_schema(
    parameters=[OpenApiParameter(k, str, required=False) for k in board.FILTERS],
    responses=LeaderboardRowOut(many=True),
)
@api_view(["GET"])
def leaderboard(request):
    """Per model × GPU type × engine: the best throughput and the best cost per 1M output
    tokens measured at the SLO. Filters: model, gpu_type, engine, family."""
    require(request.membership, "lab.view")
    rows = board.leaderboard(org=request.org, filters=_filters(request))
    return Response(
        [
            {
                **{k: r[k] for k in ("model", "family", "gpu_type", "engine", "results")},
                "best_throughput": EntryOut(r["best_throughput"]).data,
                "best_cost": EntryOut(r["best_cost"]).data if r["best_cost"] else None,
            }
            for r in rows
        ]
    )


@extend_schema(
    parameters=[OpenApiParameter(k, str, required=False) for k in board.FILTERS],
    responses={200: OpenApiTypes.OBJECT},
)
@api_view(["GET"])
def leaderboard_export(request):
    require(request.membership, "lab.view")
    return Response(board.leaderboard_export(org=request.org, filters=_filters(request)))


class _BundleParser(JSONObjectParser):
    """A bundle is foreign input: nesting deep enough to exhaust the decoder is a 400."""

    def parse(self, stream, media_type=None, parser_context=None):
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise ParseError("The JSON is nested too deeply.") from None


@extend_schema(request=OpenApiTypes.OBJECT, responses={201: EntryOut(many=True)})
@api_view(["POST"])
@parser_classes([_BundleParser, MultiPartParser])
def leaderboard_import(request):
    """Import a results bundle (the JSON body, or a `bundle` file upload)."""
    require(request.membership, "lab.manage")
    # Refused by size before anything is parsed.
    if int(request.META.get("CONTENT_LENGTH") or 0) > board.bundles.MAX_BYTES + 64 * 1024:
        raise ValidationError({"bundle": f"At most {board.bundles.MAX_BYTES // 1024} KiB."})
    if request.content_type.startswith("multipart/"):
        upload = request.FILES.get("bundle")
        raw = upload.read(board.bundles.MAX_BYTES + 1) if upload else b""
    else:
        raw = json.dumps(request.data).encode()  # parsed by the service, field by field
    created = board.leaderboard_import(org=request.org, user=request.user, raw=raw)
    return Response(EntryOut(created, many=True).data, status=status.HTTP_201_CREATED)
