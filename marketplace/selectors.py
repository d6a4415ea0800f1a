from typing import Any

from django.db.models import Exists, F, OuterRef, Prefetch, Q, QuerySet, Subquery
from django.db.models.functions import Coalesce

from billing.selectors import gpu_hour_cents_sql
from marketplace.models import CatalogModel, ServingProfile

SIZES = {
    "small": (0, 10, "under 10B"),
    "medium": (10, 40, "10–40B"),
    "large": (40, 150, "40–150B"),
    "xl": (150, 100000, "over 150B"),
}
SORTS = {
    "popular": ["-downloads", "-likes", "name"],
    "size": ["parameters_b", "name"],
    "-size": ["-parameters_b", "name"],
    "name": ["name"],
    "price": ["cheapest_cents", "name"],
}


def profiles_priced() -> QuerySet[Any]:
    # Typed loosely on purpose: the annotation `price_cents` is not a model field, and a
    # QuerySet[ServingProfile] would make the type checker refuse ordering by it.
    """Profiles with `price_cents`: a replica-hour at the GPU-hour rate billing charges
    (its rate table, the one price) × GPUs per replica."""
    rate = Coalesce(gpu_hour_cents_sql("gpu_type__code"), 0)
    return ServingProfile.objects.annotate(price_cents=rate * F("gpu_count"))


def visible_models(*, org) -> QuerySet[CatalogModel]:
    """Public entries, plus the organization's private ones."""
    return CatalogModel.objects.filter(Q(organization=None) | Q(organization=org), listed=True)


def catalog_list(
    *,
    org,
    search: str = "",
    family: str = "",
    size: str = "",
    task: str = "",
    license: str = "",
    engine: str = "",
    gpu_type: str = "",
    sort: str = "popular",
) -> QuerySet[CatalogModel]:
    qs = visible_models(org=org).annotate(
        cheapest_cents=Subquery(
            profiles_priced()
            .filter(model=OuterRef("pk"), fits=True)
            .order_by("price_cents")
            .values("price_cents")[:1]
        )
    )
    if search:
        for word in search.split()[:5]:
            qs = qs.filter(
                Q(name__icontains=word)
                | Q(slug__icontains=word)
                | Q(hf_repo__icontains=word)
                | Q(family__icontains=word)
            )
    if family:
        qs = qs.filter(family=family)
    if size in SIZES:
        low, high, _ = SIZES[size]
        qs = qs.filter(parameters_b__gte=low, parameters_b__lt=high)
    if task:
        qs = (
            qs.filter(tasks__contains=[task])
            if _json_contains_supported()
            else qs.filter(tasks__icontains=f'"{task}"')
        )
    if license:
        qs = qs.filter(license=license)
    if engine:
        qs = qs.filter(Exists(ServingProfile.objects.filter(model=OuterRef("pk"), engine=engine)))
    if gpu_type:
        qs = qs.filter(
            Exists(
                ServingProfile.objects.filter(
                    model=OuterRef("pk"), gpu_type__code=gpu_type, fits=True
                )
            )
        )
    # The grid deploys a CPU profile in one click: its card lists them.
    cpu = Prefetch(
        "profiles",
        queryset=ServingProfile.objects.filter(gpu_type__code="cpu", fits=True).order_by("name"),
        to_attr="cpu_profiles",
    )
    return qs.prefetch_related(cpu).order_by(*SORTS.get(sort, SORTS["popular"]))


def _json_contains_supported() -> bool:
    from django.db import connection

    return connection.vendor == "postgresql"


def catalog_get(*, org, slug: str) -> CatalogModel | None:
    return (
        visible_models(org=org)
        .filter(slug=slug)
        .prefetch_related(
            Prefetch(
                "profiles",
                queryset=profiles_priced()
                .select_related("gpu_type")
                .order_by("price_cents", "gpu_count", "name"),
            )
        )
        .order_by(F("organization").asc(nulls_last=True))  # an org's own entry wins
        .first()
    )


def facets(*, org) -> dict:
    qs = visible_models(org=org)
    from deployments.models import GpuType

    return {
        "families": sorted(set(qs.values_list("family", flat=True))),
        "licenses": sorted(set(qs.values_list("license", flat=True))),
        "gpu_types": list(GpuType.objects.values_list("code", "name")),
        "sizes": [(k, v[2]) for k, v in SIZES.items()],
        "tasks": ["chat", "code", "reasoning"],
        "engines": ["vllm", "sglang", "llama.cpp"],
    }
