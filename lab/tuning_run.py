"""The search loop of a tuning: propose a configuration, run it as a temporary deployment
on real capacity, measure it, tell the study, until the budget is spent, the search has
converged, or someone cancels.

Each trial's deployment is an ordinary one — placed, quota-checked and billed by the
deployments services — and is deleted (GPUs released) when the trial ends, whether it
completed, was pruned, failed or was cancelled. The run is re-entrant: a worker killed in
the middle leaves a trial marked running; the next run tears that trial's deployment
down, records it as failed, and goes on from the recorded trials.
"""

import logging
import math
import threading
import time
from collections.abc import Callable

from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.utils import timezone

from billing.selectors import gpu_hour_cents
from deployments.engine_auth import engine_api_key
from deployments.models import Deployment, DeploymentStatus, Replica, ReplicaStatus
from deployments.services import deployment_create, deployment_delete, deployment_reconcile
from lab import search
from lab.models import (
    Benchmark,
    RunStatus,
    Target,
    TrialState,
    Tuning,
    TuningTrial,
)
from lab.runner import measure
from lab.tunings import leaderboard_record, trial_launch

log = logging.getLogger("lab.tunings")

READY_TIMEOUT_S = 300.0
LOG_CHARS = 20_000
CONVERGENCE_TOL = 0.01


class Cancelled(Exception):
    pass


# What a trial's end means for the benchmark that recorded its points: a pruned trial's
# points were measured in full, they just stopped early.
_BENCHMARK_STATUS: dict[str, str] = {
    TrialState.COMPLETE: RunStatus.SUCCEEDED,
    TrialState.PRUNED: RunStatus.SUCCEEDED,
    TrialState.CANCELLED: RunStatus.CANCELLED,
}


def _log(tuning: Tuning, line: str, **fields) -> None:
    stamp = timezone.now().strftime("%H:%M:%S")
    text = (tuning.log + f"[{stamp}] {line}\n")[-LOG_CHARS:]
    tuning.log = text
    Tuning.objects.filter(pk=tuning.pk).update(log=text, updated_at=timezone.now(), **fields)
    for k, v in fields.items():
        setattr(tuning, k, v)


def _cancel_requested(tuning: Tuning) -> bool:
    return Tuning.objects.filter(pk=tuning.pk, cancel_requested=True).exists()


class _CancelWatch:
    """Whether a cancel was asked, for code on an event loop (the load generator polls
    between requests, where the ORM may not be called): a thread asks the database once
    a second and sets a flag."""

    def __init__(self, tuning_id: int):
        self.tuning_id = tuning_id
        self.cancelled = threading.Event()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        try:
            while not self._done.wait(1.0):
                if Tuning.objects.filter(pk=self.tuning_id, cancel_requested=True).exists():
                    self.cancelled.set()
                    return
        finally:
            connection.close()

    def __enter__(self) -> Callable[[], bool]:
        self._thread.start()
        return self.cancelled.is_set

    def __exit__(self, *_exc) -> None:
        self._done.set()
        self._thread.join()


def _records(tuning: Tuning) -> list[search.TrialRecord]:
    return [
        search.TrialRecord(
            params=t.params,
            state=t.state,
            value=t.value,
            intermediate={int(k): v for k, v in t.intermediate.items()},
        )
        for t in tuning.trials.order_by("number")
    ]


def _spent(tuning: Tuning) -> tuple[float, str]:
    """How much of the budget is spent (0..1) and in which words."""
    done = tuning.trials.exclude(state=TrialState.RUNNING).count()
    if "trials" in tuning.budget:
        return done / tuning.budget["trials"], f"{done}/{tuning.budget['trials']} trials"
    hours = tuning.gpu_seconds / 3600
    return hours / tuning.budget["gpu_hours"], f"{hours:.3f}/{tuning.budget['gpu_hours']} GPU-h"


def _stop_reason(tuning: Tuning) -> str:
    spent, words = _spent(tuning)
    if spent >= 1:
        return f"budget spent ({words})"
    trials = tuning.budget.get("trials", 30)
    patience = max(3, math.ceil(trials / 3))
    # Only the search's own proposals count: queued warm-start configurations are earlier
    # knowledge being checked, not the search learning.
    values = [
        t.value if t.state == TrialState.COMPLETE else None
        for t in tuning.trials.exclude(state=TrialState.RUNNING)
        .filter(warm=False)
        .order_by("number")
    ]
    if len(values) >= 2 * patience and search.converged(
        tuning.objective, values, patience=patience, tol=CONVERGENCE_TOL
    ):
        return f"converged: the last {patience} trials improved the best by under 1%"
    return ""


def _teardown(trial: TuningTrial) -> None:
    if trial.deployment_id is None:
        return
    d = Deployment.objects.filter(pk=trial.deployment_id).first()
    if d is not None and d.deleted_at is None:
        deployment_delete(deployment=d)  # settles after commit: GPUs are free on return


def _finish_trial(trial: TuningTrial, state: str, *, note: str = "", value=None) -> None:
    _teardown(trial)
    now = timezone.now()
    trial.state, trial.note, trial.value, trial.finished_at = state, note[:300], value, now
    trial.gpu_seconds = max(0.0, (now - trial.started_at).total_seconds()) * trial.gpus
    trial.save(
        update_fields=[
            "state",
            "note",
            "value",
            "finished_at",
            "gpu_seconds",
            "points",
            "intermediate",
            "benchmark",
        ]
    )
    if trial.benchmark_id is not None:
        Benchmark.objects.filter(pk=trial.benchmark_id, status=RunStatus.RUNNING).update(
            status=_BENCHMARK_STATUS.get(state, RunStatus.FAILED),
            error=note[:300] if state == TrialState.FAILED else "",
            finished_at=now,
        )
    Tuning.objects.filter(pk=trial.tuning_id).update(
        gpu_seconds=sum(trial.tuning.trials.values_list("gpu_seconds", flat=True))
    )
    trial.tuning.refresh_from_db(fields=["gpu_seconds"])


def _wait_ready(deployment_id: int, stop: Callable[[], bool]) -> Replica:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if stop():
            raise Cancelled
        # Driven here rather than waiting for the worker's queue: this task may hold the
        # only worker slot. The reconciler's lease keeps this and the worker's pass apart.
        deployment_reconcile(deployment_id=deployment_id)
        d = Deployment.objects.get(pk=deployment_id)
        if d.status == DeploymentStatus.FAILED:
            raise ValidationError(f"deployment failed: {d.status_reason[:200]}")
        replica = d.replicas.filter(status=ReplicaStatus.RUNNING).first()
        if replica is not None and d.status == DeploymentStatus.RUNNING:
            return replica
        time.sleep(0.5)
    raise ValidationError(f"not ready within {READY_TIMEOUT_S:.0f} s")


def _cost(point: dict, *, gpu_type: str, gpus: int) -> float | None:
    tps = point.get("output_tokens_per_s") or 0
    cents = gpu_hour_cents(gpu_type)
    if not tps or not cents:
        return None
    return round(cents / 100 * gpus / (tps * 3600) * 1_000_000, 4)


def _intermediate(objective: str, points: list[dict], slo: dict, gpus: int) -> float | None:
    return search.trial_value(objective, points, slo, gpus=gpus)


def _run_trial(tuning: Tuning, trial: TuningTrial, study, otrial) -> None:
    stop = lambda: _cancel_requested(tuning)  # noqa: E731
    d = deployment_create(
        organization=tuning.organization,
        user=tuning.created_by,
        name=f"tune-{tuning.pk}-{trial.number}",
        engine=tuning.engine,
        image=tuning.image,
        model_ref=tuning.model_ref,
        engine_args=list(trial.launch),
        gpu_type=trial.gpu_type,
        gpus_per_replica=trial.gpus,
        regions=tuning.regions.get(trial.gpu_type, []),
        source=f"lab:tuning/{tuning.pk}/trial/{trial.number}",
    )
    trial.deployment = d
    trial.save(update_fields=["deployment"])
    _log(tuning, f"trial {trial.number}: deployment {d.name} starting", phase="starting")
    replica = _wait_ready(d.pk, stop)
    bench = Benchmark.objects.create(
        organization=tuning.organization,
        created_by=tuning.created_by,
        deployment=d,
        target=Target.REPLICA,
        replica=replica,
        workload=tuning.workload,
        load=tuning.load,
        slo=tuning.slo,
        seed=tuning.seed,
        status=RunStatus.RUNNING,
        phase=f"tuning {tuning.pk}, trial {trial.number}",
        started_at=timezone.now(),
    )
    trial.benchmark = bench
    workload = dict(tuning.workload, seed=tuning.seed)
    levels = tuning.load["concurrency"]
    for step, concurrency in enumerate(levels):
        if stop():
            raise Cancelled
        _log(
            tuning,
            f"trial {trial.number}: measuring at concurrency {concurrency}",
            phase=f"trial {trial.number}: concurrency {concurrency}",
        )
        with _CancelWatch(tuning.pk) as cancelled:
            measured = measure(
                base_url=replica.url,
                api_key=engine_api_key(replica.pk),
                model=d.name,
                # Warm-up once per deployment, before its first point.
                workload=dict(workload, warmup_requests=workload["warmup_requests"] * (step == 0)),
                load=dict(tuning.load, concurrency=[concurrency]),
                slo=tuning.slo,
                should_stop=cancelled,
            )
        point = measured[0].as_dict() if measured else {}
        if stop():
            raise Cancelled
        point["cost_per_1m_output_tokens"] = _cost(point, gpu_type=trial.gpu_type, gpus=trial.gpus)
        trial.points = [*trial.points, point]
        Benchmark.objects.filter(pk=bench.pk).update(
            points=trial.points, progress=(step + 1) / len(levels)
        )
        value = _intermediate(tuning.objective, trial.points, tuning.slo, trial.gpus)
        # Under an SLO, more load only adds latency: a lowest load that misses the SLO
        # means every higher one will too, so the trial is hopeless.
        if value is None and step == 0 and tuning.objective != search.Objective.MIN_LATENCY:
            raise _Pruned("misses the SLO at the lowest load" + _missed(point))
        if value is not None:
            trial.intermediate = {**trial.intermediate, str(step): value}
            otrial.report(value, step)
            # Warm-start configurations are measured in full (they were good before).
            if not trial.warm and step < len(levels) - 1 and otrial.should_prune():
                raise _Pruned(f"below the median of earlier trials at step {step + 1}")
    Benchmark.objects.filter(pk=bench.pk).update(
        status=RunStatus.SUCCEEDED, progress=1.0, finished_at=timezone.now()
    )


class _Pruned(Exception):
    pass


def _missed(point: dict) -> str:
    """Why a point missed, in the trial's log: its errors (with the first), else its TTFT."""
    if errors := point.get("errors"):
        first = next(iter(point.get("error_samples") or []), "")
        return f" (errors {errors}/{point.get('requests')}{': ' + first[:160] if first else ''})"
    return f" (TTFT p95 {(point.get('ttft_ms') or {}).get('p95', 0):.0f} ms)"


def _next_trial(tuning: Tuning):
    history = _records(tuning)
    study, otrial, params = search.propose(
        engine=tuning.engine,
        objective=tuning.objective,
        space=tuning.space,
        history=history,
        warm=tuning.warm_start,
        seed=tuning.seed + len(history),
    )
    gpu_type = params.get("gpu_type") or tuning.gpu_types[0]
    warm = any({k: w.get(k) for k in params} == params for w in tuning.warm_start)
    trial = TuningTrial.objects.create(
        tuning=tuning,
        number=len(history) + 1,
        gpu_type=gpu_type,
        params=params,
        launch=trial_launch(tuning, params),
        warm=warm,
        gpus=1,
    )
    return study, otrial, trial


def _finish(tuning: Tuning, status: str, reason: str) -> None:
    best = None
    for t in tuning.trials.filter(state=TrialState.COMPLETE, value__isnull=False):
        if best is None or search.better(tuning.objective, t.value, best.value):
            best = t
    if status == RunStatus.SUCCEEDED and best is None:
        status, reason = RunStatus.FAILED, f"{reason}; no trial met the SLO"
    Tuning.objects.filter(pk=tuning.pk).update(
        status=status,
        best_trial=best,
        stop_reason=reason[:200],
        phase=reason[:200],
        progress=1.0,
        finished_at=timezone.now(),
    )
    tuning.refresh_from_db()
    if best is not None:
        leaderboard_record(tuning)
    _log(tuning, f"finished: {reason}" + (f"; best is trial {best.number}" if best else ""))


def tuning_run(*, tuning_id: int) -> None:
    """Run (or resume) a tuning until it stops. Safe to call twice."""
    with transaction.atomic():
        tuning = Tuning.objects.select_for_update().get(pk=tuning_id)
        if tuning.is_finished:
            return
        tuning.status, tuning.started_at = RunStatus.RUNNING, tuning.started_at or timezone.now()
        tuning.save(update_fields=["status", "started_at", "updated_at"])
    for left in tuning.trials.filter(state=TrialState.RUNNING):
        _finish_trial(left, TrialState.FAILED, note="interrupted (the worker stopped)")
    while True:
        tuning.refresh_from_db()
        if tuning.cancel_requested:
            return _finish(tuning, RunStatus.CANCELLED, "cancelled")
        reason = _stop_reason(tuning)
        if reason:
            return _finish(tuning, RunStatus.SUCCEEDED, reason)
        try:
            study, otrial, trial = _next_trial(tuning)
        except ValidationError as exc:
            return _finish(tuning, RunStatus.SUCCEEDED, "; ".join(exc.messages))
        _log(tuning, f"trial {trial.number}: {' '.join(trial.launch[-24:])}")
        try:
            _run_trial(tuning, trial, study, otrial)
        except Cancelled:
            _finish_trial(trial, TrialState.CANCELLED, note="cancelled")
            continue
        except _Pruned as exc:
            _finish_trial(trial, TrialState.PRUNED, note=f"pruned: {exc}")
        except ValidationError as exc:
            # Quota, placement or a start failure: recorded with its reason, and the search
            # goes on (a quota refusal ends the tuning: no trial could run).
            text = "; ".join(exc.messages)
            _finish_trial(trial, TrialState.FAILED, note=text)
            if "quota" in text.lower() or "spend" in text.lower():
                return _finish(tuning, RunStatus.FAILED, f"trial refused: {text}")
        except Exception as exc:
            log.exception("tuning %s trial %s failed", tuning.pk, trial.number)
            _finish_trial(trial, TrialState.FAILED, note=f"error: {type(exc).__name__}: {exc}")
        else:
            value = search.trial_value(tuning.objective, trial.points, tuning.slo, gpus=trial.gpus)
            note = "" if value is not None else "no load point met the SLO"
            _finish_trial(trial, TrialState.COMPLETE, note=note, value=value)
        spent, words = _spent(tuning)
        _log(
            tuning,
            f"trial {trial.number}: {trial.state}"
            + (
                f", {trial.value:.4g} {search.Objective.UNITS[tuning.objective]}"
                if trial.value
                else ""
            )
            + (f" ({trial.note})" if trial.note else ""),
            progress=min(spent, 0.99),
            phase=f"{words} done",
        )
