"""Benchmark pages. Thin: parse, check access, call lab.services, render."""

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from lab import selectors
from portal.access import require
from portal.views import org_required


@org_required
def benchmark_list(request: HttpRequest) -> HttpResponse:
    require(request.membership, "lab.view")
    return render(
        request,
        "lab/benchmark_list.html",
        {"benchmarks": selectors.benchmark_list(org=request.org)},
    )
