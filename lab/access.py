from django.http import Http404
from django.shortcuts import get_object_or_404

from lab.models import Benchmark
from portal.models import Organization


def access_benchmark(org: Organization | None, pk) -> Benchmark:
    if org is None:
        raise Http404
    return get_object_or_404(
        Benchmark.objects.select_related("deployment__gpu_type", "created_by"),
        organization=org,
        pk=pk,
    )
