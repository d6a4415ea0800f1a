from django.db.models import QuerySet

from lab.models import Benchmark


def benchmark_list(*, org) -> QuerySet[Benchmark]:
    return Benchmark.objects.filter(organization=org).select_related("deployment", "created_by")


def benchmarkable_deployments(*, org):
    from deployments.models import Deployment, DeploymentStatus

    return Deployment.objects.filter(
        organization=org,
        deleted_at__isnull=True,
        status__in=[DeploymentStatus.RUNNING, DeploymentStatus.DEGRADED],
    ).order_by("name")
