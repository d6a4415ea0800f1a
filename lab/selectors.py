from django.db.models import QuerySet

from lab.models import Benchmark


def benchmark_list(*, org) -> QuerySet[Benchmark]:
    return Benchmark.objects.filter(organization=org).select_related("deployment", "created_by")
