"""REST API for benchmarks. Thin: parse, check access, call lab.services."""

from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from lab import selectors, services
from lab.access import access_benchmark
from lab.models import Benchmark, Target
from portal.access import require

MAX_ID = 2**63 - 1


class BenchmarkIn(serializers.Serializer):
    deployment = serializers.IntegerField(min_value=1, max_value=MAX_ID)
    target = serializers.ChoiceField(choices=Target.choices, default=Target.GATEWAY)
    # Shapes are checked by lab.specs (exact names, typed, ranged), for both doors alike.
    workload = serializers.JSONField(required=False, default=dict)
    load = serializers.JSONField(required=False, default=dict)
    slo = serializers.JSONField(required=False, default=dict)


class BenchmarkCreated(serializers.ModelSerializer):
    class Meta:
        model = Benchmark
        fields = ["id", "status"]


class BenchmarkOut(serializers.ModelSerializer):
    deployment = serializers.SerializerMethodField()
    log_tail = serializers.SerializerMethodField()

    class Meta:
        model = Benchmark
        fields = [
            "id",
            "deployment",
            "target",
            "status",
            "phase",
            "progress",
            "points",
            "summary",
            "workload",
            "load",
            "slo",
            "seed",
            "runner",
            "error",
            "log_tail",
            "created_at",
            "started_at",
            "finished_at",
        ]

    def get_deployment(self, b) -> dict:
        return {"id": b.deployment_id, "name": b.deployment.name}

    def get_log_tail(self, b) -> str:
        return "\n".join(b.log.splitlines()[-40:])


class BenchmarkViewSet(viewsets.GenericViewSet):
    serializer_class = BenchmarkOut

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return Benchmark.objects.none()
        return selectors.benchmark_list(org=self.request.org)

    def list(self, request):
        require(request.membership, "lab.view")
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response(BenchmarkOut(page, many=True).data)

    def retrieve(self, request, pk=None):
        require(request.membership, "lab.view")
        return Response(BenchmarkOut(access_benchmark(request.org, pk)).data)

    @extend_schema(request=BenchmarkIn, responses={201: BenchmarkCreated})
    def create(self, request):
        """Validate the deployment, workload, load and SLO, then queue the run."""
        require(request.membership, "lab.manage")
        data = BenchmarkIn(data=request.data)
        data.is_valid(raise_exception=True)
        v = data.validated_data
        bench = services.benchmark_create(
            organization=request.org,
            user=request.user,
            deployment_id=v["deployment"],
            target=v["target"],
            workload=v["workload"],
            load=v["load"],
            slo=v["slo"],
        )
        return Response(BenchmarkCreated(bench).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=None, responses={200: BenchmarkOut})
    @action(detail=True, methods=["post"])
    def cancel(self, request, pk=None):
        require(request.membership, "lab.manage")
        bench = services.benchmark_cancel(benchmark=access_benchmark(request.org, pk))
        return Response(BenchmarkOut(bench).data)
