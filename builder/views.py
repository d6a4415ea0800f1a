from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from builder import selectors, services, specs, submit, weights
from builder.access import access_build
from builder.inspection import ModelFacts
from builder.models import Build, WeightsCache
from portal.access import require
from portal.roles import can
from portal.views import org_required


@org_required
def build_list(request: HttpRequest) -> HttpResponse:
    require(request.membership, "builds.view")
    builds = selectors.build_list(org=request.org)
    return render(
        request,
        "builder/build_list.html",
        {"builds": builds, "may_manage": can(request.membership.role, "builds.manage")},
    )


def _errors(exc: ValidationError) -> dict:
    return exc.message_dict if hasattr(exc, "error_dict") else {"__all__": exc.messages}


@org_required
@require_http_methods(["GET", "POST"])
def build_new(request: HttpRequest) -> HttpResponse:
    """Step 1, the source. Inspection (step 2) happens on submit."""
    require(request.membership, "builds.manage")
    data = request.POST if request.method == "POST" else {}
    errors = {}
    if request.method == "POST":
        kind = data.get("kind", "")
        try:
            upload_id = None
            if kind == Build.Source.UPLOAD:
                upload_id = services.upload_create(
                    organization=request.org,
                    user=request.user,
                    files=request.FILES.getlist("files"),
                ).pk
            build = submit.build_submit(
                organization=request.org,
                user=request.user,
                name=data.get("name", ""),
                source_kind=kind,
                repo_id=data.get("repo_id", "").strip(),
                revision=data.get("revision", "").strip(),
                token=data.get("token", "").strip(),
                upload_id=upload_id,
                path=data.get("path", "").strip(),
            )
        except ValidationError as exc:
            errors = _errors(exc)
        else:
            messages.success(request, f"Inspected {build.source_label}.")
            return redirect("builder:detail", pk=build.pk)
    # The token is never echoed back into the form.
    values = {k: data.get(k, "") for k in ("name", "kind", "repo_id", "revision", "path")}
    return render(
        request,
        "builder/build_new.html",
        {"values": values, "errors": errors},
        status=400 if errors else 200,
    )


def _detail_context(request, build: Build, errors=None) -> dict:
    facts = ModelFacts(
        **{k: v for k, v in build.facts.items() if k in ModelFacts.__dataclass_fields__}
    )
    cache = WeightsCache.objects.filter(key=weights.cache_key(build)).first()
    return {
        "build": build,
        "facts": build.facts,
        "fits": services.largest_fit(facts, build.quantization),
        "engines": specs.engines_for(build.facts.get("architecture", "")),
        "versions": specs.ENGINE_VERSIONS,
        "quantizations": specs.QUANTIZATIONS.get(build.engine, []),
        "option_names": sorted(specs.OPTIONS.get(build.engine, {})),
        "options_text": " ".join(f"{k}={v}" for k, v in build.options.items()),
        "env_text": " ".join(f"{k}={v}" for k, v in build.env.items()),
        "cache": cache,
        "errors": errors or {},
        "may_manage": can(request.membership.role, "builds.manage"),
        "log_tail": "\n".join(build.log.splitlines()[-60:]),
        "live": build.is_running or (cache is not None and cache.status in {"pending", "fetching"}),
    }


@org_required
def build_detail(request: HttpRequest, pk: int) -> HttpResponse:
    require(request.membership, "builds.view")
    build = access_build(request.org, pk)
    template = "builder/build_detail.html"
    if request.htmx and request.GET.get("partial") == "status":
        template += "#status"
    return render(request, template, _detail_context(request, build))


def _pairs(text: str, field: str) -> dict:
    pairs = {}
    for item in (text or "").split():
        if "=" not in item:
            raise ValidationError({field: f"Write {field} as name=value pairs; got {item!r}."})
        key, value = item.split("=", 1)
        pairs[key] = value
    return pairs


@org_required
@require_POST
def build_configure(request: HttpRequest, pk: int) -> HttpResponse:
    build = access_build(request.org, pk)
    require(request.membership, "builds.manage")
    try:
        services.build_configure(
            build=build,
            engine=request.POST.get("engine", ""),
            engine_version=request.POST.get("engine_version", ""),
            quantization=request.POST.get("quantization", ""),
            max_context=request.POST.get("max_context") or None,
            options=_pairs(request.POST.get("options", ""), "options"),
            env=_pairs(request.POST.get("env", ""), "env"),
        )
    except ValidationError as exc:
        build.refresh_from_db()
        return render(
            request,
            "builder/build_detail.html",
            _detail_context(request, build, _errors(exc)),
            status=400,
        )
    messages.success(request, "Spec saved.")
    return redirect("builder:detail", pk=build.pk)


@org_required
@require_POST
def build_start(request: HttpRequest, pk: int) -> HttpResponse:
    build = access_build(request.org, pk)
    require(request.membership, "builds.manage")
    try:
        services.build_start(build=build)
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
    return redirect("builder:detail", pk=build.pk)
