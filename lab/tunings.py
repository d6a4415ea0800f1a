"""Tunings' business operations: create (every input checked, nothing queued on a bad
one), cancel, deploy the winner, publish it into the catalog. The search loop that runs
the trials is ``lab.tuning_run``; the leaderboard and bundles are ``lab.leaderboard``.

Invariants:
* A tuning is created whole or not at all; its run is queued after the commit.
* What a trial runs is the catalog profile's launch with the tunable flags replaced by
  values from the search space — all through the engine's flag schema.
* Publishing writes measured figures only, each with its provenance.
"""

import math
import random

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.http import Http404
from django.utils import timezone

from builder.access import access_build
from builder.models import Build
from deployments.flags import parse_engine_args, render_args, schema_for
from deployments.models import Deployment, GpuType, Region
from deployments.services import deployment_create
from lab import search, specs
from lab.models import (
    LeaderboardEntry,
    ResultSource,
    RunStatus,
    TrialState,
    Tuning,
    TuningTrial,
)
from marketplace import selectors as catalog
from marketplace.launch import profile_launch
from marketplace.models import CatalogModel, ServingProfile
from marketplace.services import profile_refresh_fit

MAX_TRIALS = 200
MAX_GPU_HOURS = 10_000.0
MAX_GPU_TYPES = 8
# The tolerance a published figure is stated with: re-measuring the profile's deployment
# with the same workload and load lands within this share of the published figure.
REMEASURE_TOLERANCE = 0.15
# Load a tuning measures each trial at, unless it names its own.
TUNING_LOAD = {"kind": "concurrency", "concurrency": [1, 2, 4]}
WARM_CONFIGS = 3


def _budget(value) -> dict:
    if not isinstance(value, dict) or len(value) != 1:
        raise ValidationError({"budget": 'Give exactly one of {"trials": n} or {"gpu_hours": h}.'})
    [(key, number)] = value.items()
    if key == "trials":
        if isinstance(number, bool) or not isinstance(number, int):
            raise ValidationError({"budget.trials": f"Give a whole number from 1 to {MAX_TRIALS}."})
        if not 1 <= number <= MAX_TRIALS:
            raise ValidationError(
                {"budget.trials": f"Must be from 1 to {MAX_TRIALS}; got {number}."}
            )
        return {"trials": number}
    if key == "gpu_hours":
        if isinstance(number, bool) or not isinstance(number, int | float):
            raise ValidationError({"budget.gpu_hours": "Give a number of GPU-hours."})
        if not math.isfinite(number) or not 0 < number <= MAX_GPU_HOURS:
            raise ValidationError(
                {"budget.gpu_hours": f"Must be above 0 and at most {MAX_GPU_HOURS:g} GPU-hours."}
            )
        return {"gpu_hours": float(number)}
    raise ValidationError(
        {"budget": f"{str(key)[:40]!r} is not a budget; give trials or gpu_hours."}
    )


def _gpu_types(value) -> tuple[list[GpuType], dict[str, list[str]]]:
    """The GPU types asked for, each with the enabled regions that have a pool of it."""
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_GPU_TYPES:
        raise ValidationError(
            {"gpu_types": f'Give a list of 1 to {MAX_GPU_TYPES} GPU type codes, e.g. ["cpu"].'}
        )
    if not all(isinstance(v, str) for v in value) or len(set(value)) != len(value):
        raise ValidationError({"gpu_types": "Give each GPU type code once, as text."})
    known = {g.code: g for g in GpuType.objects.filter(code__in=value)}
    all_codes = ", ".join(GpuType.objects.values_list("code", flat=True))
    regions: dict[str, list[str]] = {}
    for code in value:
        if code not in known:
            raise ValidationError(
                {"gpu_types": f"Unknown GPU type {code[:40]!r}; choose from: {all_codes}."}
            )
        regions[code] = list(
            Region.objects.filter(
                enabled=True,
                pools__gpu_type=known[code],
                pools__enabled=True,
                pools__nodes__isnull=False,
            )
            .distinct()
            .order_by("code")
            .values_list("code", flat=True)
        )
        if not regions[code]:
            raise ValidationError({"gpu_types": f"No enabled pool has {known[code].name} GPUs."})
    return [known[c] for c in value], regions


def _catalog_model(*, organization, model, build) -> tuple[CatalogModel, Build | None]:
    if (model in (None, "")) == (build in (None, "")):
        raise ValidationError({"model": "Give a catalog model (slug) or a build (id), not both."})
    if build not in (None, ""):
        if isinstance(build, bool) or not str(build).isdigit():
            raise ValidationError({"build": "Give a build id (a whole number)."})
        b = access_build(organization, int(build))  # another organization's: 404
        if b.catalog_model is None:
            raise ValidationError({"build": f"Build {b.pk} has not produced a model yet."})
        return b.catalog_model, b
    if not isinstance(model, str) or len(model) > 100:
        raise ValidationError({"model": "Give a catalog model's slug."})
    found = catalog.catalog_get(org=organization, slug=model)
    if found is None:
        raise Http404(f"No model {model!r} in the catalog.")
    return found, None


def _base_profile(model: CatalogModel, gpu_types: list[GpuType]) -> ServingProfile:
    profiles = list(model.profiles.select_related("gpu_type").all())
    wanted = {g.code for g in gpu_types}
    for p in profiles:
        if p.gpu_type.code in wanted:
            return p
    if profiles:
        return profiles[0]
    raise ValidationError({"model": f"{model.slug} has no serving profile to start from."})


def base_args(profile: ServingProfile, space: dict) -> list[str]:
    """The profile's rendered launch (marketplace.launch) minus the flags the search varies."""
    try:
        args = profile_launch(profile).engine_args
    except ValidationError as exc:
        raise ValidationError({"model": " ".join(exc.messages)}) from None
    pairs = parse_engine_args(profile.engine, args, field_name="model")
    return render_args([(f, v) for f, v in pairs if f.key not in space])


def trial_launch(tuning: Tuning, params: dict) -> list[str]:
    flags = {k: v for k, v in params.items() if k != "gpu_type"}
    return list(tuning.base_args) + search.launch_args(
        tuning.engine, flags, version=tuning.engine_version
    )


def _warm_configs(*, organization, family: str, engine: str) -> list[dict]:
    """The best configurations of this organization's earlier tunings of the same model
    family and engine, best first: the search tries them before drawing its own."""
    earlier = (
        Tuning.objects.filter(
            organization=organization,
            family=family,
            engine=engine,
            status=RunStatus.SUCCEEDED,
            best_trial__isnull=False,
        )
        .select_related("best_trial")
        .order_by("-finished_at")[:10]
    )
    configs: list[dict] = []
    for t in earlier:
        params = dict(t.best_trial.params) if t.best_trial else {}
        if params and params not in configs:
            configs.append(params)
    return configs[:WARM_CONFIGS]


@transaction.atomic
def tuning_create(
    *,
    organization,
    user,
    model=None,
    build=None,
    gpu_types=None,
    objective=None,
    slo=None,
    budget=None,
    workload=None,
    load=None,
    space=None,
) -> Tuning:
    catalog_model, the_build = _catalog_model(organization=organization, model=model, build=build)
    gpus, regions = _gpu_types(gpu_types)
    if objective not in search.Objective.ALL:
        raise ValidationError({"objective": f"Choose one of: {', '.join(search.Objective.ALL)}."})
    clean_budget = _budget(budget)
    clean_load = specs.load_parse(TUNING_LOAD if load is None else load)
    if clean_load["kind"] != "concurrency":
        raise ValidationError({"load.kind": 'A tuning measures a "concurrency" sweep.'})
    clean_slo = specs.slo_parse(slo)
    if objective != search.Objective.MIN_LATENCY and all(
        clean_slo[k] is None for k in ("ttft_p95_ms", "itl_p95_ms", "e2e_p95_ms")
    ):
        raise ValidationError(
            {"slo": f"{objective} needs at least one of ttft_p95_ms, itl_p95_ms, e2e_p95_ms."}
        )
    clean_workload = specs.workload_parse(workload)
    profile = _base_profile(catalog_model, gpus)
    need = specs.workload_context_need(clean_workload)
    if need > profile.max_model_len:
        raise ValidationError(
            {
                "workload": f"A request needs up to {need} tokens of context; "
                f"{catalog_model.slug} is served with {profile.max_model_len}."
            }
        )
    schema = schema_for(profile.engine)
    clean_space = search.search_space(profile.engine, cpu=all(g.is_cpu for g in gpus), narrow=space)
    if len(gpus) > 1:
        clean_space["gpu_type"] = [g.code for g in gpus]
    seed = random.SystemRandom().randrange(2**31)
    tuning = Tuning.objects.create(
        organization=organization,
        created_by=user,
        catalog_model=catalog_model,
        build=the_build,
        model_label=catalog_model.name,
        model_ref=profile.model_ref or catalog_model.hf_repo,
        family=catalog_model.family,
        engine=profile.engine,
        engine_version=schema.version,
        image=profile.image,
        gpu_types=[g.code for g in gpus],
        regions=regions,
        objective=objective,
        slo=clean_slo,
        budget=clean_budget,
        workload=clean_workload,
        load=clean_load,
        space=clean_space,
        base_args=base_args(profile, clean_space),
        warm_start=_warm_configs(
            organization=organization, family=catalog_model.family, engine=profile.engine
        ),
        seed=seed,
        phase="queued",
    )
    from lab.tasks import run_tuning

    transaction.on_commit(lambda: run_tuning.delay(tuning.pk))
    return tuning


def tuning_cancel(*, tuning: Tuning) -> Tuning:
    """Ask the run to stop: it tears the running trial's deployment down and releases its
    GPUs. A tuning that never started is cancelled at once."""
    with transaction.atomic():
        t = Tuning.objects.select_for_update().get(pk=tuning.pk)
        if t.is_finished:
            return t
        t.cancel_requested = True
        if t.status == RunStatus.QUEUED:
            t.status = RunStatus.CANCELLED
            t.phase = "cancelled before it started"
            t.finished_at = timezone.now()
        t.save(update_fields=["cancel_requested", "status", "phase", "finished_at", "updated_at"])
    return t


def _winner(tuning: Tuning) -> TuningTrial:
    if tuning.best_trial is None or tuning.best_trial.state != TrialState.COMPLETE:
        raise ValidationError({"tuning": "This tuning has no winning trial (yet)."})
    return tuning.best_trial


def tuning_deploy(*, tuning: Tuning, user, name: str = "", regions=None) -> Deployment:
    """Deploy the winning configuration as an ordinary deployment."""
    best = _winner(tuning)
    deployment = deployment_create(
        organization=tuning.organization,
        user=user,
        name=name or f"tuned-{tuning.pk}",
        engine=tuning.engine,
        image=tuning.image,
        model_ref=tuning.model_ref,
        engine_args=list(best.launch),
        gpu_type=best.gpu_type,
        gpus_per_replica=best.gpus,
        regions=regions or tuning.regions.get(best.gpu_type, []),
        source=f"lab:tuning/{tuning.pk}/trial/{best.number}",
    )
    Tuning.objects.filter(pk=tuning.pk).update(deployed=deployment)
    return deployment


def can_publish(user) -> bool:
    """Staff, or a catalog maintainer (may change serving profiles)."""
    return bool(
        user
        and user.is_authenticated
        and (user.is_staff or user.has_perm("marketplace.change_servingprofile"))
    )


def best_point(tuning: Tuning, trial: TuningTrial) -> dict:
    """The load point that gave the trial its value."""
    gpus = max(trial.gpus, 1)
    for p in trial.points:
        v = search.point_value(tuning.objective, p, gpus=gpus)
        if v is not None and math.isclose(v, trial.value or 0.0, rel_tol=1e-9):
            return p
    return trial.points[-1] if trial.points else {}


def provenance(tuning: Tuning, trial: TuningTrial) -> dict:
    point = best_point(tuning, trial)
    return {
        "tuning": tuning.pk,
        "trial": trial.number,
        "benchmark": trial.benchmark_id,
        "measured_at": (trial.finished_at or tuning.updated_at).isoformat(),
        "engine": tuning.engine,
        "engine_version": tuning.engine_version,
        "image": tuning.image or f"{tuning.engine} {tuning.engine_version} (pool default)",
        "hardware": f"{trial.gpus}×{trial.gpu_type}",
        "workload": tuning.workload,
        "load": {"concurrency": point.get("concurrency")},
        "slo": tuning.slo,
        "objective": tuning.objective,
        "tolerance": REMEASURE_TOLERANCE,
    }


@transaction.atomic
def tuning_publish(*, tuning: Tuning, user) -> ServingProfile:
    """Publish the winner as the model's tuned profile for its GPU type: its launch, and
    the figures it measured with their provenance (shown on the model page)."""
    if not can_publish(user):
        raise PermissionDenied("Only staff or catalog maintainers publish tuned profiles.")
    best = _winner(tuning)
    model = tuning.catalog_model
    if model is None:
        raise ValidationError({"tuning": "The tuned model is no longer in the catalog."})
    if model.organization_id not in (None, tuning.organization_id):
        raise Http404
    base = _base_profile(model, list(GpuType.objects.filter(code=best.gpu_type)))
    gpu = GpuType.objects.get(code=best.gpu_type)
    point = best_point(tuning, best)
    tps = float(point.get("output_tokens_per_s") or 0.0)
    figures = {
        "output_tokens_per_s": round(tps, 2),
        "ttft_p95_ms": (point.get("ttft_ms") or {}).get("p95"),
        "itl_p95_ms": (point.get("itl_ms") or {}).get("p95"),
        "cost_per_1m_output_tokens": point.get("cost_per_1m_output_tokens"),
    }
    measured = {**provenance(tuning, best), "figures": figures}
    profile, _ = ServingProfile.objects.update_or_create(
        model=model,
        name=f"tuned-{gpu.code}-{tuning.engine.replace('.', '')}"[:60],
        defaults={
            "engine": tuning.engine,
            "gpu_type": gpu,
            "gpu_count": best.gpus,
            "quantization": base.quantization,
            "max_model_len": base.max_model_len,
            "concurrent_sequences": max(base.concurrent_sequences, 1),
            "engine_args": list(best.launch),
            "model_ref": tuning.model_ref,
            "image": tuning.image,
            "throughput_tokens_s": max(1, round(tps)),
            "throughput_source": f"measured: Gantry Lab tuning #{tuning.pk}, trial "
            f"#{best.number}, {best.gpus}×{gpu.code}, concurrency {point.get('concurrency')}",
            "measured": measured,
        },
    )
    profile_refresh_fit(profile)
    Tuning.objects.filter(pk=tuning.pk).update(published_profile=profile)
    LeaderboardEntry.objects.filter(tuning=tuning).update(organization=None)
    return profile


def leaderboard_record(tuning: Tuning) -> LeaderboardEntry | None:
    """The tuning's best, as a leaderboard row of its organization."""
    best = tuning.best_trial
    if best is None or best.state != TrialState.COMPLETE:
        return None
    point = best_point(tuning, best)
    entry, _ = LeaderboardEntry.objects.update_or_create(
        tuning=tuning,
        defaults={
            "organization": tuning.organization,
            "source": ResultSource.TUNING,
            "model": (tuning.catalog_model.slug if tuning.catalog_model else tuning.model_label)[
                :100
            ],
            "family": tuning.family,
            "engine": tuning.engine,
            "engine_version": tuning.engine_version,
            "gpu_type": best.gpu_type,
            "gpu_count": best.gpus,
            "objective": tuning.objective,
            "launch": list(best.launch),
            "output_tokens_per_s": float(point.get("output_tokens_per_s") or 0.0),
            "ttft_p95_ms": (point.get("ttft_ms") or {}).get("p95"),
            "itl_p95_ms": (point.get("itl_ms") or {}).get("p95"),
            "cost_per_1m_output_tokens": point.get("cost_per_1m_output_tokens"),
            "slo": tuning.slo,
            "workload": tuning.workload,
            "provenance": provenance(tuning, best),
            "measured_at": best.finished_at or timezone.now(),
        },
    )
    return entry
