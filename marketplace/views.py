from urllib.parse import urlencode

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods

from billing.selectors import gpu_hour_prices, gpu_hour_provenance
from deployments.models import Region
from deployments.selectors import playground_deployments
from marketplace import selectors, services
from marketplace.access import access_catalog_model
from marketplace.fit import format_price, gpu_memory_source, price_per_hour_cents, profile_fit
from marketplace.launch import launch_or_reason
from portal.access import require
from portal.roles import can
from portal.views import org_required

FILTERS = ("search", "family", "size", "task", "license", "engine", "gpu_type", "sort")
PAGE_SIZE = 48


@org_required
def grid(request: HttpRequest) -> HttpResponse:
    params = {k: request.GET.get(k, "").strip() for k in FILTERS}
    qs = selectors.catalog_list(org=request.org, **{k: v for k, v in params.items() if v})
    page = Paginator(qs, PAGE_SIZE).get_page(request.GET.get("page"))
    query = urlencode({k: v for k, v in params.items() if v})
    context = {
        "page": page,
        "models": page.object_list,
        "params": params,
        "query": query,
        "facets": selectors.facets(org=request.org),
    }
    template = "marketplace/grid.html"
    if request.htmx and request.htmx.target == "results":
        template += "#results"
    return render(request, template, context)


def _profile_rows(model) -> list[dict]:
    prices, provenance = gpu_hour_prices(), gpu_hour_provenance()
    rows = []
    for p in model.profiles.all():
        launch, launch_error = launch_or_reason(p)
        rows.append(
            {
                "profile": p,
                "fit": profile_fit(p),
                "memory_source": gpu_memory_source(p.gpu_type),
                "price": format_price(price_per_hour_cents(p, prices)),
                "price_source": provenance.get(p.gpu_type.code, ""),
                "launch": launch,
                "launch_error": launch_error,
            }
        )
    return rows


@org_required
def model_detail(request: HttpRequest, slug: str) -> HttpResponse:
    model = access_catalog_model(request.org, slug)
    return render(
        request,
        "marketplace/model_detail.html",
        {
            "model": model,
            "rows": _profile_rows(model),
            "may_deploy": can(request.membership.role, "deployments.manage"),
            # The organization's deployments of this model, each with its playground.
            "deployments": playground_deployments(
                org=request.org, source_prefix=f"catalog:{model.slug}/"
            )
            if can(request.membership.role, "playground.use")
            else [],
        },
    )


@org_required
@require_http_methods(["GET", "POST"])
def deploy(request: HttpRequest, slug: str) -> HttpResponse:
    require(request.membership, "deployments.manage")
    model = access_catalog_model(request.org, slug)
    profiles = list(model.profiles.all())
    data = request.POST if request.method == "POST" else request.GET
    error = None
    # The page previews what the service will choose; the POST lets the service choose.
    try:
        profile = services.profile_pick(model, data.get("profile") or None)
    except ValidationError as exc:
        # A GET only previews: a model without profiles, or a stale ?profile= in a link,
        # shows the choices rather than an error.
        profile, error = None, (exc if request.method == "POST" else None)
    roomy = services.regions_with_room(profile) if profile else []
    region = data.get("region") or (roomy[0].code if roomy else "")
    if request.method == "POST" and error is None:
        try:
            deployment = services.catalog_deploy(
                org=request.org,
                user=request.user,
                model=model,
                profile=profile,
                regions=[region] if region else None,
                name=data.get("name", "").strip(),
            )
        except ValidationError as exc:
            error = exc
        else:
            messages.success(request, f"Deploying {model.name} as {deployment.name}.")
            return redirect("deployments:detail", pk=deployment.pk)
    context = {
        "model": model,
        "profiles": profiles,
        "profile": profile,
        "fit": profile_fit(profile) if profile else None,
        "launch": launch_or_reason(profile)[0] if profile else None,
        "price": format_price(price_per_hour_cents(profile)) if profile else "",
        "price_source": gpu_hour_provenance().get(profile.gpu_type.code, "") if profile else "",
        "regions": Region.objects.filter(enabled=True).order_by("code"),
        "roomy": {r.code for r in roomy},
        "region": region,
        "name": data.get("name", ""),
        "errors": error.message_dict
        if error is not None and hasattr(error, "error_dict")
        else ({"__all__": error.messages} if error else {}),
    }
    template = "marketplace/deploy.html"
    if request.htmx and request.method == "GET":
        template += "#check"
    return render(request, template, context, status=400 if error else 200)
