"""Catalog operations: load the YAML catalog, sync facts from the hub, deploy a profile."""

import logging
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import yaml
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from billing.selectors import gpu_hour_prices
from deployments.gpu_types import ensure_gpu_types
from deployments.models import Deployment, GpuPool, GpuType, Node, Region
from deployments.placement import explain_unschedulable
from deployments.services import deployment_create
from deployments.services.weights import (
    hub_ref,
    hub_token_for,
    weights_access_check,
)
from marketplace import selectors
from marketplace.artifacts import profile_weights
from marketplace.fit import price_per_hour_cents, profile_fit
from marketplace.launch import profile_launch
from marketplace.models import CatalogModel, CatalogSync, Managed, ServingProfile

log = logging.getLogger(__name__)

CATALOG_DIR = Path(__file__).resolve().parent / "catalog"
MODEL_FIELDS = [
    "name",
    "family",
    "hf_repo",
    "description",
    "tasks",
    "architecture",
    "parameters_b",
    "active_parameters_b",
    "context_length",
    "license",
    "gated",
    "num_layers",
    "hidden_size",
    "num_heads",
    "num_kv_heads",
    "head_dim",
    "attention",
    "kv_lora_rank",
    "qk_rope_head_dim",
    "quant_repos",
]


def profile_refresh_fit(profile: ServingProfile) -> ServingProfile:
    fit = profile_fit(profile)
    ServingProfile.objects.filter(pk=profile.pk).update(
        fits=fit.fits,
        fit_reason=fit.sentence,
        memory_required_gib=Decimal(str(fit.required_gib)),
        memory_available_gib=Decimal(str(fit.available_gib)),
    )
    profile.fits = fit.fits
    profile.fit_reason = fit.sentence
    profile.memory_required_gib = Decimal(str(fit.required_gib))
    profile.memory_available_gib = Decimal(str(fit.available_gib))
    return profile


@dataclass
class LoadResult:
    created: int = 0
    updated: int = 0
    kept: int = 0  # operator-managed entries left as they are

    def __str__(self) -> str:
        return f"{self.created} created, {self.updated} updated, {self.kept} kept (operator's)"


def _model_values(entry: dict, defaults: dict) -> dict:
    values = {k: entry[k] for k in MODEL_FIELDS if k in entry}
    values.setdefault("active_parameters_b", None)
    values.setdefault("gated", False)
    values.setdefault("attention", "gqa")
    values.setdefault("description", "")
    values.setdefault("quant_repos", {})
    values["sources"] = {**defaults.get("sources", {}), **entry.get("sources", {})}
    return values


@transaction.atomic
def catalog_load(*, directory: Path = CATALOG_DIR) -> LoadResult:
    """Load every YAML file of the catalog. Idempotent; operator entries are left alone."""
    ensure_gpu_types()
    defaults_path = directory / "_defaults.yaml"
    defaults = yaml.safe_load(defaults_path.read_text()) if defaults_path.exists() else {}
    gpu_types = {g.code: g for g in GpuType.objects.all()}
    result = LoadResult()
    for path in sorted(directory.glob("*.yaml")):
        if path.name.startswith("_"):
            continue
        data = yaml.safe_load(path.read_text()) or {}
        for entry in data.get("models", []):
            slug = entry["slug"]
            existing = CatalogModel.objects.filter(slug=slug, organization=None).first()
            if existing is not None and existing.managed_by == Managed.OPERATOR:
                # Their facts stay the operator's; the computed fit follows the estimate.
                for kept in existing.profiles.select_related("model", "gpu_type"):
                    profile_refresh_fit(kept)
                result.kept += 1
                continue
            values = _model_values(entry, defaults)
            model, created = CatalogModel.objects.update_or_create(
                slug=slug,
                organization=None,
                defaults={**values, "managed_by": Managed.CATALOG, "listed": True},
            )
            result.created += created
            result.updated += not created
            names = []
            for p in entry.get("profiles", []):
                if p["gpu"] not in gpu_types:
                    raise ValidationError(
                        f"{path.name}: {slug}/{p['name']}: unknown GPU {p['gpu']}"
                    )
                profile, _ = ServingProfile.objects.update_or_create(
                    model=model,
                    name=p["name"],
                    defaults={
                        "engine": p["engine"],
                        "gpu_type": gpu_types[p["gpu"]],
                        "gpu_count": p.get("count", 1),
                        "quantization": p["quant"],
                        "max_model_len": p["max_len"],
                        "concurrent_sequences": p.get("seqs", 1),
                        "gpu_memory_utilization": Decimal(str(p.get("utilization", "0.90"))),
                        "engine_args": p.get("args", []),
                        "engine_version": str(p.get("engine_version", "")),
                        "kv_cache_dtype": p.get("kv_cache_dtype", "auto"),
                        "tensor_parallel": p.get("tp"),
                        "parallel_reason": p.get("tp_reason", ""),
                        "model_ref": p.get("model_ref", ""),
                        "weights_repo": p.get("weights_repo", ""),
                        "weights_revision": p.get("weights_revision", "main"),
                        "image": p.get("image", ""),
                        "throughput_tokens_s": p.get("throughput_tokens_s"),
                        "throughput_source": p.get("throughput_source", ""),
                    },
                )
                _check_launch(path, profile)
                profile_refresh_fit(profile)
                names.append(p["name"])
            model.profiles.exclude(name__in=names).delete()
    return result


def _check_launch(path: Path, profile: ServingProfile) -> None:
    """Refuse (the whole load rolls back) a profile whose launch does not validate; pin
    the engine version it was checked against."""
    try:
        launch = profile_launch(profile, strict=True)
    except ValidationError as exc:
        detail = "; ".join(f"{k}: {' '.join(v)}" for k, v in exc.message_dict.items())
        raise ValidationError(
            f"{path.name}: {profile.model.slug}/{profile.name}: launch does not validate: {detail}"
        ) from None
    if profile.engine_version != launch.engine_version:
        profile.engine_version = launch.engine_version
        profile.save(update_fields=["engine_version"])


# --- Hub sync -------------------------------------------------------------------------


def _hub_api():
    from huggingface_hub import HfApi

    return HfApi(endpoint=settings.HF_ENDPOINT or None, token=settings.HF_TOKEN or None)


def _hub_license(card: dict, tags: list[str]) -> str:
    """The licence id the hub gives: the card's ``license``, or for ``other`` the card's
    own ``license_name`` (how the hub spells custom licences such as ``qwen``)."""
    license_ = card.get("license") or next(
        (t.split(":", 1)[1] for t in tags if t.startswith("license:")), ""
    )
    license_ = str(license_ or "").strip().lower()
    if license_ == "other" and card.get("license_name"):
        return str(card["license_name"]).strip().lower()
    return license_


def catalog_sync(*, timeout: float = 10.0) -> CatalogSync:
    """Refresh licence, gated flag, downloads, likes, last modified and the safetensors
    parameter count of every public entry from the hub. An entry the hub cannot answer
    for is left exactly as it was, and the run says so."""
    import httpx2  # the hub client's HTTP library: its timeouts and connection errors
    from huggingface_hub.errors import HfHubHTTPError

    hub_errors = (HfHubHTTPError, httpx2.HTTPError, OSError, ValueError)
    run = CatalogSync.objects.create()
    api = _hub_api()
    failures: list[str] = []
    updated = 0
    for model in CatalogModel.objects.filter(organization=None).exclude(hf_repo=""):
        try:
            info = api.model_info(model.hf_repo, timeout=timeout)
        except hub_errors as exc:
            failures.append(f"{model.slug}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
            continue
        changes: dict = {"synced_at": timezone.now()}
        card = info.card_data.to_dict() if info.card_data else {}
        license_ = _hub_license(card, info.tags or [])
        # The catalog curates licence ids the hub only knows as "other" (qwen, llama4…):
        # a generic answer never replaces a specific one.
        if license_ and not (license_ == "other" and model.license not in ("", "other")):
            changes["license"] = license_[:64]
        if info.gated is not None:
            changes["gated"] = bool(info.gated)
        if info.downloads is not None:
            changes["downloads"] = info.downloads
        if info.likes is not None:
            changes["likes"] = info.likes
        if info.last_modified is not None:
            changes["hub_last_modified"] = info.last_modified
        if info.safetensors is not None and info.safetensors.total:
            changes["parameters_b"] = (Decimal(info.safetensors.total) / Decimal(10**9)).quantize(
                Decimal("0.01")
            )
        CatalogModel.objects.filter(pk=model.pk).update(**changes)
        if "parameters_b" in changes and changes["parameters_b"] != model.parameters_b:
            for profile in model.profiles.select_related("model", "gpu_type"):
                profile_refresh_fit(profile)
        updated += 1
    run.finished_at = timezone.now()
    run.updated = updated
    run.failed = len(failures)
    run.ok = not failures
    run.message = (
        f"updated {updated} entries"
        if not failures
        else f"updated {updated}; left {len(failures)} as they were: " + "; ".join(failures)
    )
    run.save()
    log.info("catalog sync: %s", run.message)
    return run


# --- Deploy ---------------------------------------------------------------------------


def regions_with_room(profile: ServingProfile) -> list[Region]:
    """Enabled regions where one node has room for a replica of this profile, roomiest
    first."""
    nodes = Node.objects.filter(
        pool__gpu_type=profile.gpu_type,
        pool__enabled=True,
        pool__healthy=True,
        healthy=True,
        pool__region__enabled=True,
    ).select_related("pool__region")
    free: dict[int, int] = {}
    regions: dict[int, Region] = {}
    for node in nodes:
        if node.gpus_free >= profile.gpu_count:
            region = node.pool.region
            regions[region.pk] = region
            free[region.pk] = free.get(region.pk, 0) + node.gpus_free
    return sorted(regions.values(), key=lambda r: (-free[r.pk], r.code))


def default_profile(model: CatalogModel) -> ServingProfile | None:
    """The cheapest profile that fits and has room somewhere; else the cheapest that fits."""
    prices = gpu_hour_prices()
    profiles = sorted(
        (p for p in model.profiles.select_related("gpu_type") if p.fits),
        key=lambda p: (price_per_hour_cents(p, prices), p.gpu_count, p.name),
    )
    for p in profiles:
        if regions_with_room(p):
            return p
    return profiles[0] if profiles else None


def profile_pick(model: CatalogModel, key: str | int | ServingProfile | None) -> ServingProfile:
    """The profile a caller asked for (by name or id), or the default one when none was asked
    for. The deploy page and the API both choose through here, so both pick the same one."""
    if isinstance(key, ServingProfile):
        profile: ServingProfile | None = key
    elif key in (None, ""):
        profile = default_profile(model)
        if profile is None:
            raise ValidationError({"profile": f"{model.slug} has no serving profile to deploy."})
    else:
        wanted = str(key)
        profile = next(
            (p for p in model.profiles.all() if p.name == wanted or str(p.pk) == wanted), None
        )
    if profile is None or profile.model_id != model.pk:
        raise ValidationError(
            {
                "profile": f"{model.slug} has no profile {getattr(key, 'name', key)!r}; "
                "choose one of: " + ", ".join(p.name for p in model.profiles.all())
            }
        )
    return profile


def _free_name(org, base: str) -> str:
    base = base[:55].strip("-.").replace(".", "-") or "model"
    name, n = base, 1
    while Deployment.objects.filter(organization=org, name=name, deleted_at__isnull=True).exists():
        n += 1
        name = f"{base}-{n}"
    return name


def catalog_deploy(
    *,
    org,
    user,
    model: CatalogModel,
    profile: str | int | ServingProfile | None = None,
    regions: list[str] | None = None,
    name: str = "",
    min_replicas: int = 1,
    max_replicas: int = 1,
    replicas: int | None = None,
    autoscale_target: int | None = None,
    scale_to_zero_after_s: int | None = None,
    source: str = "",
) -> Deployment:
    """Deploy a catalog profile: the one asked for, else the cheapest that fits; in the
    regions asked for, else the roomiest. Refuses — with the reason, creating nothing — a
    profile that does not fit its GPUs, a region without that GPU type, and regions without
    room."""
    profile = profile_pick(model, profile)
    if not profile.fits:
        raise ValidationError({"profile": f"{profile.name}: {profile_fit(profile).sentence}"})
    try:
        launch = profile_launch(profile)
    except ValidationError as exc:
        raise ValidationError({"profile": " ".join(exc.messages)}) from None
    regions = [code for code in (regions or []) if code]
    if not regions:
        roomy = regions_with_room(profile)
        if not roomy:
            raise ValidationError(
                {
                    "regions": f"No region has room for {profile.gpu_count}×"
                    f"{profile.gpu_type.name} right now."
                }
            )
        regions = [roomy[0].code]
    known = {r.code: r for r in Region.objects.filter(code__in=regions, enabled=True)}
    for code in regions:
        if code not in known:
            raise ValidationError({"regions": f"Unknown region {code!r}."})
        if not known[code].pools.filter(gpu_type=profile.gpu_type, enabled=True).exists():
            raise ValidationError(
                {
                    "regions": f"{code} has no {profile.gpu_type.name} pool; profile "
                    f"{profile.name} needs {profile.gpu_count}×{profile.gpu_type.name}."
                }
            )
    if not any(r.code in regions for r in regions_with_room(profile)):
        probe = Deployment(
            gpu_type=profile.gpu_type, gpus_per_replica=profile.gpu_count, regions=list(regions)
        )
        raise ValidationError({"regions": f"No room: {explain_unschedulable(probe)}."})
    weights = _weights_plan(org, model, profile, regions)
    # A hub:<repo>@<revision>[/<file>] model also ties the deployment to its weights fetch
    # in each of its regions (deployment_create does that).
    return deployment_create(
        organization=org,
        user=user,
        name=name or _free_name(org, model.slug),
        engine=profile.engine,
        image=profile.image,
        model_ref=hub_ref(*weights) if weights else profile.model_ref or model.hf_repo,
        engine_args=launch.engine_args,
        gpu_type=profile.gpu_type.code,
        gpus_per_replica=profile.gpu_count,
        min_replicas=min_replicas,
        max_replicas=max_replicas,
        replicas=replicas,
        autoscale_target=autoscale_target,
        scale_to_zero_after_s=scale_to_zero_after_s,
        regions=list(regions),
        source=source or f"catalog:{model.slug}/{profile.name}",
    )


def _weights_plan(org, model: CatalogModel, profile: ServingProfile, regions: list[str]):
    """(repo, revision, file) of the hub weights this deploy fetches into the weights cache,
    or None (nothing to fetch, or the pools' engines download them themselves). A gated repo
    is checked against the hub with the token that will be used, before anything is
    created."""
    weights = profile_weights(profile)
    if weights is None:
        return None
    repo, revision, filename = weights
    if (
        not filename
        and not GpuPool.objects.filter(
            region__code__in=regions,
            gpu_type=profile.gpu_type,
            enabled=True,
            engine_fetches_weights=False,
        ).exists()
    ):
        weights = None  # the engines download them, with HF_TOKEN in their environment
    if repo == model.hf_repo and model.gated:
        token = hub_token_for(org)
        if not token:
            raise ValidationError(
                {
                    "model": f"{repo} is gated on the hub: it needs a hub token with access. "
                    "Set your organization's hub token (Settings → API keys → Hub token, or "
                    "PUT /api/v1/hub-token), or ask an operator to set HF_TOKEN."
                }
            )
        weights_access_check(repo=repo, revision=revision, filename=filename, token=token)
    return weights


def catalog_deploy_by_slug(*, org, user, value: str, **options) -> Deployment:
    """The catalog's deployment source: `model` (a slug this organization sees) in
    POST /api/v1/deployments."""
    model = selectors.catalog_get(org=org, slug=value)
    if model is None:
        raise ValidationError({"model": f"No model {value!r} in the catalog."})
    return catalog_deploy(org=org, user=user, model=model, **options)
