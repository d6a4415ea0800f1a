from datetime import timedelta

from django.conf import settings
from django.contrib import messages
from django.contrib.admin.views.decorators import staff_member_required
from django.core.exceptions import ValidationError
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_http_methods, require_POST

from billing import selectors as billing_selectors
from billing import services as billing
from billing.models import Invoice
from deployments import selectors, services
from deployments.access import access_deployment, access_replica
from deployments.flags import flag_tables
from deployments.forms import DeploymentForm, ScaleForm
from deployments.models import LIVE_REPLICA_STATUSES, AutoscaleMetric, RoutingPolicy
from deployments.placement import capacity_by_region_and_type
from deployments.playground import playground_token_mint
from deployments.services.weights import deployment_weights_retry as weights_retry
from portal.access import require
from portal.forms import apply_errors
from portal.roles import can
from portal.views import org_required


@org_required
def deployment_list(request: HttpRequest) -> HttpResponse:
    require(request.membership, "deployments.view")
    deployments = list(selectors.deployment_list(org=request.org))
    context = {
        "deployments": deployments,
        "polling": any(d.is_transitional for d in deployments),
        "may_manage": can(request.membership.role, "deployments.manage"),
    }
    template = "deployments/deployment_list.html"
    if request.htmx and request.GET.get("partial") == "table":
        template += "#deployment-table"
    return render(request, template, context)


@org_required
@require_http_methods(["GET", "POST"])
def deployment_create(request: HttpRequest) -> HttpResponse:
    require(request.membership, "deployments.manage")
    form = DeploymentForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            deployment = services.deployment_create(
                organization=request.org, user=request.user, **form.service_kwargs()
            )
        except ValidationError as exc:
            apply_errors(form, _form_errors(exc))
        else:
            messages.success(request, f"Deployment {deployment.name} created.")
            return redirect("deployments:detail", pk=deployment.pk)
    return render(
        request,
        "deployments/deployment_form.html",
        {"form": form, "flag_schemas": flag_tables()},
    )


def _form_errors(exc: ValidationError) -> ValidationError:
    """The form asks for regions as three choices; show region errors on the first."""
    if hasattr(exc, "error_dict") and "regions" in exc.error_dict:
        errors = exc.message_dict
        errors["region_1"] = errors.pop("regions")
        return ValidationError(errors)
    return exc


def _detail_context(request: HttpRequest, deployment) -> dict:
    deployment = access_deployment(request.org, deployment.pk)
    replicas = list(
        deployment.replicas.filter(status__in=LIVE_REPLICA_STATUSES)
        .select_related("region", "pool", "node")
        .order_by("ordinal")
    )
    deployment.live_replicas = replicas
    return {
        "deployment": deployment,
        "replicas": replicas,
        "history": selectors.replica_history(deployment=deployment, limit=10),
        "events": list(selectors.deployment_events(deployment=deployment)[:60]),
        "endpoint": selectors.endpoint_of(deployment),
        "may_manage": can(request.membership.role, "deployments.manage"),
        "scale_form": ScaleForm(initial={"replicas": deployment.desired_replicas}),
        "traffic": selectors.traffic_summary(deployment=deployment),
        "playground": selectors.playable(deployment)
        and can(request.membership.role, "playground.use"),
        "gateway_base": f"{settings.GATEWAY_URL}/v1",
        "max_tokens_limit": settings.GATEWAY_MAX_TOKENS,
        "routing_policies": RoutingPolicy.choices,
        "autoscale_metrics": AutoscaleMetric.choices,
        "autoscale_meaning": services.target_meaning(deployment),
    }


@org_required
def deployment_detail(request: HttpRequest, pk: int) -> HttpResponse:
    require(request.membership, "deployments.view")
    deployment = access_deployment(request.org, pk)
    template = "deployments/deployment_detail.html"
    if request.htmx and request.GET.get("partial") == "live":
        template += "#live"
    return render(request, template, _detail_context(request, deployment))


def _after_action(request: HttpRequest, deployment) -> HttpResponse:
    if request.htmx:
        response = render(
            request, "deployments/deployment_detail.html#live", _detail_context(request, deployment)
        )
        return response
    return redirect("deployments:detail", pk=deployment.pk)


@org_required
@require_POST
def deployment_scale(request: HttpRequest, pk: int) -> HttpResponse:
    deployment = access_deployment(request.org, pk)
    require(request.membership, "deployments.manage")
    form = ScaleForm(request.POST)
    try:
        if not form.is_valid():
            raise ValidationError({"replicas": "Give a whole number, 0 or more."})
        deployment = services.deployment_scale(
            deployment=deployment, replicas=form.cleaned_data["replicas"]
        )
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
    return _after_action(request, deployment)


SERVING_FIELDS = (
    "routing_policy",
    "autoscale_metric",
    "autoscale_target",
    "scale_up_window_s",
    "scale_down_window_s",
)


@org_required
@require_POST
def deployment_serving(request: HttpRequest, pk: int) -> HttpResponse:
    deployment = access_deployment(request.org, pk)
    require(request.membership, "deployments.manage")
    given = {k: request.POST[k] for k in SERVING_FIELDS if k in request.POST}
    try:
        deployment = services.deployment_serving_update(deployment=deployment, **given)
        messages.success(request, "Serving settings saved.")
    except ValidationError as exc:
        for field, errors in exc.message_dict.items():
            messages.error(request, f"{field}: {' '.join(errors)}")
    return _after_action(request, deployment)


@org_required
@require_POST
def deployment_weights_retry(request: HttpRequest, pk: int) -> HttpResponse:
    deployment = access_deployment(request.org, pk)
    require(request.membership, "deployments.manage")
    try:
        deployment = weights_retry(deployment=deployment)
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
    return _after_action(request, deployment)


@org_required
@require_POST
def deployment_stop(request: HttpRequest, pk: int) -> HttpResponse:
    deployment = access_deployment(request.org, pk)
    require(request.membership, "deployments.manage")
    services.deployment_stop(deployment=deployment)
    return _after_action(request, deployment)


@org_required
@require_POST
def deployment_start(request: HttpRequest, pk: int) -> HttpResponse:
    deployment = access_deployment(request.org, pk)
    require(request.membership, "deployments.manage")
    services.deployment_start(deployment=deployment)
    return _after_action(request, deployment)


@org_required
@require_POST
def deployment_delete(request: HttpRequest, pk: int) -> HttpResponse:
    deployment = access_deployment(request.org, pk)
    require(request.membership, "deployments.manage")
    services.deployment_delete(deployment=deployment)
    messages.success(request, f"Deleted {deployment.name}; its GPUs are released.")
    if request.htmx:
        response = HttpResponse(status=204)
        response["HX-Redirect"] = "/deployments/"
        return response
    return redirect("deployments:list")


@org_required
def replica_logs(request: HttpRequest, pk: int, replica_pk: int) -> HttpResponse:
    require(request.membership, "deployments.view")
    replica = access_replica(request.org, pk, replica_pk)
    return render(
        request,
        "deployments/replica_logs.html",
        {"replica": replica, "log": services.replica_logs(replica=replica, tail=200)},
    )


@staff_member_required
def capacity(request: HttpRequest) -> HttpResponse:
    rows = capacity_by_region_and_type()
    totals = {k: sum(r[k] for r in rows) for k in ("total", "allocated", "free")}
    return render(
        request,
        "deployments/capacity.html",
        {
            "rows": rows,
            "totals": totals,
            "regions": selectors.region_list(),
            "revenue": billing_selectors.revenue_by_region(),
        },
    )


@org_required
def usage_page(request: HttpRequest) -> HttpResponse:
    """Usage & billing: spend, limits, quotas, charts, usage by deployment, invoices.
    Lives here because it shows quota use (deployments) beside money (billing)."""
    require(request.membership, "usage.view")
    now = timezone.now()
    month, month_end = billing_selectors.month_bounds(now)
    elapsed = (now - month) / (month_end - month)
    spend = billing.spend_status(request.org)
    forecast = round(spend["spent_cents"] / elapsed) if elapsed > 0.01 else spend["spent_cents"]
    by_day = billing.usage_by_day(
        organization=request.org, start=now - timedelta(days=30), end=now + timedelta(seconds=1)
    )
    days = [(now - timedelta(days=29 - i)).date().isoformat() for i in range(30)]
    chart = {
        "days": days,
        "gpu_hours": [round(by_day.get(d, {}).get("gpu_seconds", 0) / 3600, 3) for d in days],
        "tokens": [
            by_day.get(d, {}).get("input_tokens", 0) + by_day.get(d, {}).get("output_tokens", 0)
            for d in days
        ],
    }
    may_bill = can(request.membership.role, "billing.view")
    return render(
        request,
        "billing/usage.html",
        {
            "spend": spend,
            "forecast_cents": forecast,
            "quotas": selectors.quota_usage(org=request.org),
            "lines": billing.usage_lines(
                organization=request.org, start=month, end=now + timedelta(seconds=1)
            ),
            "chart": chart,
            "invoices": Invoice.objects.filter(organization=request.org) if may_bill else None,
            "account": billing.account_for(request.org),
        },
    )


@org_required
@require_POST
def playground_token(request: HttpRequest, pk: int) -> HttpResponse:
    """The page's door to a playground token (JSON: the page's script reads it)."""
    deployment = access_deployment(request.org, pk)
    require(request.membership, "playground.use")
    try:
        minted = playground_token_mint(deployment=deployment, user=request.user)
    except ValidationError as exc:
        return JsonResponse(exc.message_dict, status=400)
    return JsonResponse(minted)


@org_required
def playground_cost(request: HttpRequest, pk: int) -> HttpResponse:
    """What an answer with these token counts costs at the organization's rates."""
    deployment = access_deployment(request.org, pk)
    require(request.membership, "playground.use")
    counts = {}
    for field in ("input_tokens", "output_tokens"):
        value = request.GET.get(field, "")
        if not value.isdigit() or int(value) > 10_000_000:
            return JsonResponse({field: ["Give a whole number from 0 to 10000000."]}, status=400)
        counts[field] = int(value)
    price = billing.token_cost(model=deployment.name, **counts)
    return JsonResponse({"micros": price["micros"], "cost": f"${price['amount']}"})


@org_required
def playground_compare(request: HttpRequest) -> HttpResponse:
    """Side by side: the same prompt to two of the organization's deployments at once."""
    require(request.membership, "playground.use")
    choices = selectors.playground_deployments(org=request.org)
    panes = []
    for field in ("a", "b"):
        value = request.GET.get(field, "")
        if value:
            if not value.isdigit():
                raise Http404
            panes.append(access_deployment(request.org, value))
    return render(
        request,
        "deployments/playground_compare.html",
        {
            "choices": choices,
            "panes": panes,
            "a": request.GET.get("a", ""),
            "b": request.GET.get("b", ""),
            "max_tokens_limit": settings.GATEWAY_MAX_TOKENS,
        },
    )
