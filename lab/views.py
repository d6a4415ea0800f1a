"""Benchmark pages. Thin: parse, check access, call lab.services, render."""

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from lab import charts, selectors, services
from lab.access import access_benchmark
from lab.forms import benchmark_form_parse
from lab.models import Target
from lab.specs import LOAD_KINDS, WORKLOAD_KINDS
from portal.access import require
from portal.roles import can
from portal.views import org_required


@org_required
def benchmark_list(request: HttpRequest) -> HttpResponse:
    require(request.membership, "lab.view")
    return render(
        request,
        "lab/benchmark_list.html",
        {
            "benchmarks": selectors.benchmark_list(org=request.org)[:100],
            "may_manage": can(request.membership.role, "lab.manage"),
        },
    )


@org_required
@require_http_methods(["GET", "POST"])
def benchmark_new(request: HttpRequest) -> HttpResponse:
    require(request.membership, "lab.manage")
    errors: dict = {}
    if request.method == "POST":
        try:
            v = benchmark_form_parse(request.POST, request.FILES)
            bench = services.benchmark_create(
                organization=request.org,
                user=request.user,
                deployment_id=v["deployment"],
                target=v["target"],
                workload=v["workload"],
                load=v["load"],
                slo=v["slo"],
            )
        except ValidationError as exc:
            errors = exc.message_dict if hasattr(exc, "error_dict") else {"__all__": exc.messages}
        else:
            messages.success(request, f"Benchmark {bench.pk} queued.")
            return redirect("lab:benchmark", pk=bench.pk)
    return render(
        request,
        "lab/benchmark_new.html",
        {
            "deployments": selectors.benchmarkable_deployments(org=request.org),
            "values": request.POST if request.method == "POST" else request.GET,
            "errors": errors,
            "targets": Target.choices,
            "workload_kinds": WORKLOAD_KINDS,
            "load_kinds": LOAD_KINDS,
        },
        status=400 if errors else 200,
    )


@org_required
def benchmark_detail(request: HttpRequest, pk: int) -> HttpResponse:
    require(request.membership, "lab.view")
    bench = access_benchmark(request.org, pk)
    context = {
        "bench": bench,
        "charts": charts.benchmark_charts(bench.points, bench.slo),
        "log_tail": "\n".join(bench.log.splitlines()[-30:]),
        "may_manage": can(request.membership.role, "lab.manage"),
    }
    if request.htmx:
        response = render(request, "lab/benchmark_detail.html#live", context)
        # 286 tells htmx to stop polling: the run is over and the fragment is final.
        if bench.is_finished:
            response.status_code = 286
        return response
    return render(request, "lab/benchmark_detail.html", context)


@org_required
@require_POST
def benchmark_cancel(request: HttpRequest, pk: int) -> HttpResponse:
    require(request.membership, "lab.manage")
    bench = services.benchmark_cancel(benchmark=access_benchmark(request.org, pk))
    messages.info(request, f"Benchmark {bench.pk}: {bench.phase}.")
    return redirect("lab:benchmark", pk=bench.pk)
