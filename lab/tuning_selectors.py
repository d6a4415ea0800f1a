"""Reads of tunings for the pages and the API (and their one access check): the trials,
the best, the Pareto front and the words that say why the best is best."""

from django.db.models import QuerySet
from django.http import Http404
from django.shortcuts import get_object_or_404

from lab import search
from lab.models import TrialState, Tuning, TuningTrial

CHART_W, CHART_H, PAD = 520, 300, 48


def access_tuning(org, pk) -> Tuning:
    """A tuning of this organization, else 404 (the same for another organization's)."""
    if org is None:
        raise Http404
    return get_object_or_404(
        Tuning.objects.select_related("best_trial", "catalog_model", "deployed"),
        organization=org,
        pk=pk,
    )


def tuning_list(*, org) -> QuerySet[Tuning]:
    return (
        Tuning.objects.filter(organization=org).select_related("best_trial").order_by("-created_at")
    )


def trials_of(tuning: Tuning) -> list[TuningTrial]:
    return list(tuning.trials.order_by("number"))


def pareto_points(tuning: Tuning, trials: list[TuningTrial]) -> tuple[list[dict], list[dict]]:
    """Every measured point of every trial that ran to the end, and the Pareto front among
    them (throughput per GPU vs throughput per user, both higher-better)."""
    points = []
    for t in trials:
        if t.state not in (TrialState.COMPLETE, TrialState.PRUNED):
            continue
        for p in t.points:
            if not p:
                continue
            points.append(
                {
                    "trial": t.number,
                    "concurrency": p.get("concurrency"),
                    "tps_per_gpu": round(float(p.get("output_tokens_per_s") or 0) / t.gpus, 3),
                    "tps_per_user": round(
                        float(p.get("output_tokens_per_s_per_user") or search.per_user_tps(p)),
                        3,
                    ),
                    "meets_slo": search.meets_slo(p, tuning.slo),
                }
            )
    return points, search.pareto_front([p for p in points if p["meets_slo"]] or points)


def chart(points: list[dict], front: list[dict]) -> dict:
    """Coordinates for the inline SVG: x = tokens/s per user, y = tokens/s per GPU."""
    if not points:
        return {}
    xmax = max(p["tps_per_user"] for p in points) * 1.1 or 1
    ymax = max(p["tps_per_gpu"] for p in points) * 1.1 or 1

    def xy(p):
        x = PAD + p["tps_per_user"] / xmax * (CHART_W - 2 * PAD)
        y = CHART_H - PAD - p["tps_per_gpu"] / ymax * (CHART_H - 2 * PAD)
        return round(x, 1), round(y, 1)

    on_front = {(p["trial"], p["concurrency"]) for p in front}
    dots = []
    for p in points:
        x, y = xy(p)
        dots.append({**p, "x": x, "y": y, "front": (p["trial"], p["concurrency"]) in on_front})
    line = " ".join(
        f"{x},{y}" for x, y in (xy(p) for p in sorted(front, key=lambda p: p["tps_per_user"]))
    )
    return {
        "w": CHART_W,
        "h": CHART_H,
        "pad": PAD,
        "dots": dots,
        "line": line,
        "xmax": round(xmax, 1),
        "ymax": round(ymax, 1),
        "x_axis_y": CHART_H - PAD,
        "x_end": CHART_W - PAD,
    }


def why_best(tuning: Tuning, trials: list[TuningTrial]) -> str:
    """In words: what the best measured, what it beat and by how much, what was cut."""
    best = tuning.best_trial
    unit = search.Objective.UNITS.get(tuning.objective, "")
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    pruned = sum(1 for t in trials if t.state == TrialState.PRUNED)
    infeasible = sum(1 for t in trials if t.state == TrialState.COMPLETE and t.value is None)
    failed = sum(1 for t in trials if t.state == TrialState.FAILED)
    if best is None or best.value is None:
        return "No trial met the SLO yet." if trials else "No trial has run yet."
    slo = ", ".join(
        f"{k.removesuffix('_ms').replace('_', ' ')} ≤ {v:g} ms"
        for k, v in tuning.slo.items()
        if v is not None and k.endswith("_ms")
    )
    words = [
        f"Trial {best.number} is best: {best.value:.4g} {unit}"
        + (f" while meeting the SLO ({slo})" if slo else "")
        + "."
    ]
    others = sorted(
        (t for t in complete if t.pk != best.pk),
        key=lambda t: t.value or 0,
        reverse=search.Objective.direction(tuning.objective) == "maximize",
    )
    if others:
        runner = others[0]
        gap = abs(best.value - (runner.value or 0)) / max(abs(best.value), 1e-9)
        worse = "less" if search.Objective.direction(tuning.objective) == "maximize" else "more"
        words.append(
            f"The runner-up, trial {runner.number}, gave {runner.value:.4g} ({gap:.1%} {worse})."
        )
        changed = [k for k in best.params if best.params.get(k) != runner.params.get(k)]
        if changed:
            words.append(
                "They differ in "
                + ", ".join(f"{k} ({best.params[k]} vs {runner.params.get(k)})" for k in changed)
                + "."
            )
    tail = []
    if pruned:
        tail.append(f"{pruned} pruned early as hopeless")
    if infeasible:
        tail.append(f"{infeasible} met the SLO at no load")
    if failed:
        tail.append(f"{failed} failed")
    if tail:
        words.append("Of the rest, " + ", ".join(tail) + ".")
    return " ".join(words)


def trial_summary(tuning: Tuning, t: TuningTrial) -> dict:
    return {
        "number": t.number,
        "state": t.state,
        "gpu_type": t.gpu_type,
        "params": t.params,
        "launch": t.launch,
        "value": t.value,
        "note": t.note,
        "warm_start": t.warm,
        "points": t.points,
        "benchmark": t.benchmark_id,
        "deployment": t.deployment_id,
        "gpu_seconds": round(t.gpu_seconds, 1),
        "started_at": t.started_at,
        "finished_at": t.finished_at,
    }
