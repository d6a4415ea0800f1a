"""Tuning and leaderboard pages. Thin: parse the form, check access, call the services in
lab.tunings / lab.leaderboard (the API calls the same ones), render."""

import json

from django.contrib import messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from deployments.models import GpuType
from lab import leaderboard as board
from lab import search, tunings
from lab import tuning_selectors as sel
from marketplace.selectors import visible_models
from portal.access import require
from portal.views import org_required


def _errors(exc: ValidationError) -> dict:
    return exc.message_dict if hasattr(exc, "error_dict") else {"__all__": exc.messages}


def _number(data, name: str):
    text = (data.get(name) or "").strip()
    if not text:
        return None
    try:
        return float(text) if "." in text else int(text)
    except ValueError:
        return text  # the service names the field and says what is allowed


def _space(data):
    text = (data.get("space") or "").strip()
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        raise ValidationError(
            {"space": 'Write JSON, e.g. {"--n_threads": [1, 2], "--n_batch": [128, 512]}.'}
        ) from None


def _form_to_request(data) -> dict:
    """The form's flat fields as the API's JSON shapes."""
    budget_kind = data.get("budget_kind") or "trials"
    concurrency = [c.strip() for c in (data.get("concurrency") or "").split(",") if c.strip()]
    return {
        "model": data.get("model", ""),
        "gpu_types": data.getlist("gpu_types"),
        "objective": data.get("objective", ""),
        "slo": {
            k: v
            for k in ("ttft_p95_ms", "itl_p95_ms", "e2e_p95_ms")
            if (v := _number(data, k)) is not None
        },
        "budget": {budget_kind: _number(data, "budget_value")},
        "workload": {
            "input_tokens": _number(data, "input_tokens") or 128,
            "output_tokens": _number(data, "output_tokens") or 32,
            "requests_per_point": _number(data, "requests_per_point") or 8,
        },
        "load": {
            "kind": "concurrency",
            "concurrency": [int(c) if c.isdigit() else c for c in concurrency] or [1, 2, 4],
        },
        "space": _space(data),
    }


@org_required
def tuning_list(request: HttpRequest) -> HttpResponse:
    require(request.membership, "lab.view")
    errors: dict = {}
    values = request.POST if request.method == "POST" else {}
    if request.method == "POST":
        require(request.membership, "lab.manage")
        try:
            asked = _form_to_request(request.POST)
            tuning = tunings.tuning_create(organization=request.org, user=request.user, **asked)
        except ValidationError as exc:
            errors = _errors(exc)
        else:
            messages.success(request, f"Tuning {tuning.pk} queued.")
            return redirect("lab:tuning", pk=tuning.pk)
    return render(
        request,
        "lab/tuning_list.html",
        {
            "tunings": sel.tuning_list(org=request.org).select_related("catalog_model")[:50],
            "models": visible_models(org=request.org).order_by("name"),
            "gpu_types": GpuType.objects.filter(pools__enabled=True).distinct(),
            "objectives": search.Objective.ALL,
            "errors": errors,
            "values": values,
            "chosen_gpus": values.getlist("gpu_types") if values else ["cpu"],
        },
        status=400 if errors else 200,
    )


@org_required
def tuning_detail(request: HttpRequest, pk: int) -> HttpResponse:
    require(request.membership, "lab.view")
    tuning = sel.access_tuning(request.org, pk)
    trials = sel.trials_of(tuning)
    points, front = sel.pareto_points(tuning, trials)
    template = "lab/tuning_detail.html"
    if request.htmx and request.GET.get("partial") == "live":
        template += "#live"
    return render(
        request,
        template,
        {
            "tuning": tuning,
            "trials": trials,
            "front": front,
            "chart": sel.chart(points, front),
            "why": sel.why_best(tuning, trials),
            "unit": search.Objective.UNITS.get(tuning.objective, ""),
            "live": not tuning.is_finished,
            "may_publish": tunings.can_publish(request.user),
            "log_tail": tuning.log[-3000:],
        },
    )


@org_required
@require_POST
def tuning_action(request: HttpRequest, pk: int, verb: str) -> HttpResponse:
    if verb not in ("cancel", "deploy", "publish"):
        raise Http404
    tuning = sel.access_tuning(request.org, pk)
    try:
        if verb == "cancel":
            require(request.membership, "lab.manage")
            tunings.tuning_cancel(tuning=tuning)
            messages.info(request, "Cancelling: the running trial is torn down.")
        elif verb == "deploy":
            require(request.membership, "deployments.manage")
            d = tunings.tuning_deploy(tuning=tuning, user=request.user)
            messages.success(request, f"Deployed the winner as {d.name}.")
            return redirect("deployments:detail", pk=d.pk)
        elif verb == "publish":
            profile = tunings.tuning_publish(tuning=tuning, user=request.user)
            messages.success(request, f"Published as {profile.model.slug}/{profile.name}.")
            return redirect("marketplace:model", slug=profile.model.slug)
    except ValidationError as exc:
        for msgs in _errors(exc).values():
            for m in msgs:
                messages.error(request, m)
    except PermissionDenied as exc:
        messages.error(request, str(exc))
    return redirect("lab:tuning", pk=tuning.pk)


@org_required
def leaderboard_page(request: HttpRequest) -> HttpResponse:
    require(request.membership, "lab.view")
    errors: dict = {}
    if request.method == "POST":
        require(request.membership, "lab.manage")
        upload = request.FILES.get("bundle")
        try:
            raw = upload.read(board.bundles.MAX_BYTES + 1) if upload else b""
            created = board.leaderboard_import(org=request.org, user=request.user, raw=raw)
        except ValidationError as exc:
            errors = _errors(exc)
        else:
            messages.success(request, f"Imported {len(created)} results.")
            return redirect("lab:leaderboard")
    filters = {k: request.GET.get(k, "") for k in board.FILTERS}
    return render(
        request,
        "lab/leaderboard.html",
        {
            "rows": board.leaderboard(org=request.org, filters=filters),
            "filters": filters,
            "errors": errors,
            "query": request.GET.urlencode(),
        },
        status=400 if errors else 200,
    )
