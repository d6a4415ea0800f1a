"""Benchmarks: create (validate everything, then queue), run (in the worker), cancel."""

import logging
import secrets
import time
from datetime import timedelta

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.utils import timezone

from billing.selectors import gpu_hour_cents
from deployments.access import access_deployment
from deployments.engine_auth import engine_api_key
from deployments.models import Deployment, DeploymentStatus, Replica, ReplicaStatus
from lab import specs
from lab.models import Benchmark, RunStatus, Target
from lab.runner import Point, measure
from portal.models import Organization
from portal.services import api_key_create, api_key_revoke

log = logging.getLogger(__name__)
LOG_LIMIT = 32 * 1024
RUNNER_NAME = "gantry-loadgen 1 (asyncio + aiohttp)"
# Where the engine's own default context is the only bound (llama-cpp-python's --n_ctx).
LLAMACPP_DEFAULT_CTX = 2048
MODEL_CONTEXT = {"demo:tiny-random-llama": 512, "demo:bench-random-llama": 4096}
CONTEXT_FLAGS = ("--n_ctx", "--max-model-len", "--context-length")
# A running benchmark beats at least twice a second; this long without a beat, its worker
# is gone.
STALE = timedelta(minutes=2)


def deployment_context_length(deployment: Deployment) -> int | None:
    """The context a replica of this deployment serves, in tokens; None when only the
    model knows (the check is then left to the engine)."""
    args = [str(a) for a in deployment.engine_args or []]
    for flag in CONTEXT_FLAGS:
        if flag in args[:-1]:
            try:
                value = int(args[args.index(flag) + 1])
            except ValueError:
                return None
            if value > 0:
                return value
            return MODEL_CONTEXT.get(deployment.model_ref)
    if deployment.engine == "llama.cpp":
        return min(LLAMACPP_DEFAULT_CTX, MODEL_CONTEXT.get(deployment.model_ref, 10**9))
    return None


def _running_replicas(deployment: Deployment):
    return Replica.objects.filter(deployment=deployment, status=ReplicaStatus.RUNNING).exclude(
        url=""
    )


@transaction.atomic
def benchmark_create(
    *,
    organization: Organization,
    user,
    deployment_id,
    target: str = Target.GATEWAY,
    workload=None,
    load=None,
    slo=None,
) -> Benchmark:
    """Validate every input (nothing is queued on a bad one), then queue the run."""
    deployment = access_deployment(organization, deployment_id)
    if target not in Target.values:
        raise ValidationError({"target": f"Choose one of: {', '.join(Target.values)}."})
    w = specs.workload_parse(workload)
    ld = specs.load_parse(load)
    s = specs.slo_parse(slo, load_kind=ld["kind"])
    ctx = deployment_context_length(deployment)
    need = specs.workload_context_need(w)
    if ctx is not None and need > ctx:
        raise ValidationError(
            {
                "workload": f"A request of this workload needs up to {need:,} tokens (prompt "
                f"+ answer, spread included); {deployment.name} serves a context of {ctx:,}."
            }
        )
    if deployment.status not in {DeploymentStatus.RUNNING, DeploymentStatus.DEGRADED}:
        raise ValidationError(
            {"deployment": f"{deployment.name} is {deployment.status}; benchmark it once running."}
        )
    if w["seed"] is None:
        w["seed"] = secrets.randbelow(2**31)
    bench = Benchmark.objects.create(
        organization=organization,
        created_by=user,
        deployment=deployment,
        target=target,
        workload=w,
        load=ld,
        slo=s,
        seed=w["seed"],
        phase="queued",
        runner=RUNNER_NAME,
    )
    from lab.tasks import run_benchmark

    transaction.on_commit(lambda: run_benchmark.delay(bench.pk))
    return bench


def benchmark_cancel(*, benchmark: Benchmark) -> Benchmark:
    """Stop a run: a queued one at once; a running one between requests (its worker
    sees the flag, keeps the points finished so far and says so)."""
    now = timezone.now()
    Benchmark.objects.filter(pk=benchmark.pk, status=RunStatus.QUEUED).update(
        status=RunStatus.CANCELLED, phase="cancelled", finished_at=now, cancel_requested=True
    )
    Benchmark.objects.filter(pk=benchmark.pk, status=RunStatus.RUNNING).update(
        cancel_requested=True, phase="cancelling"
    )
    benchmark.refresh_from_db()
    return benchmark


def _in_thread(fn):
    """The runner calls these from its worker threads: each closes the connection it
    opened, so none outlives the run."""

    def call(*args):
        try:
            return fn(*args)
        finally:
            connection.close()

    return call


class _Progress:
    """Progress and log, written to the row at most twice a second so the page can follow."""

    def __init__(self, bench_id: int):
        self.bench_id, self.text, self.flushed, self.checked = bench_id, "", 0.0, 0.0
        self.stop = False

    def line(self, message: str) -> None:
        stamp = timezone.now().strftime("%H:%M:%S")
        self.text = (self.text + f"{stamp} {message}\n")[-LOG_LIMIT:]

    def __call__(self, fraction: float, message: str) -> None:
        self.line(message)
        self.flush(progress=max(0.0, min(1.0, fraction)), phase=message[:200])

    def flush(self, **values) -> None:
        Benchmark.objects.filter(pk=self.bench_id).update(
            log=self.text, updated_at=timezone.now(), **values
        )
        self.flushed = time.monotonic()

    def should_stop(self) -> bool:
        """Polled between requests: also the run's heartbeat (updated_at), so a run whose
        worker died is told from one still going (benchmark_run)."""
        now = time.monotonic()
        if not self.stop and now - self.checked > 0.5:
            self.checked = now
            alive = Benchmark.objects.filter(pk=self.bench_id, cancel_requested=False).update(
                updated_at=timezone.now()
            )
            self.stop = alive == 0
        return self.stop


def _cost_per_1m(point: Point, *, cents_per_hour: int, gpus: int) -> float | None:
    if point.output_tokens_per_s <= 0:
        return None
    usd_per_s = cents_per_hour * gpus / 100 / 3600
    return round(usd_per_s / point.output_tokens_per_s * 1_000_000, 4)


def _endpoint(bench: Benchmark) -> tuple[str, str, int]:
    """(base URL, bearer key, replicas measured). Gateway runs use a key minted for the
    run, so its traffic is authenticated, limited and metered like any client's."""
    d = bench.deployment
    if bench.target == Target.REPLICA:
        replica = _running_replicas(d).order_by("ordinal").first()
        if replica is None:
            raise ValidationError({"deployment": f"{d.name} has no running replica."})
        Benchmark.objects.filter(pk=bench.pk).update(replica=replica)
        return replica.url, engine_api_key(replica.pk), 1
    replicas = _running_replicas(d).count()
    if replicas == 0:
        raise ValidationError({"deployment": f"{d.name} has no running replica."})
    if bench.created_by is None:
        raise ValidationError({"api_key": "The member who started the run has left."})
    key, raw = api_key_create(
        organization=bench.organization,
        user=bench.created_by,
        name=f"benchmark {bench.pk}",
    )
    Benchmark.objects.filter(pk=bench.pk).update(api_key=key)
    return settings.GATEWAY_URL, raw, replicas


def _reset_prefix_cache(bench: Benchmark, base_url: str, key: str):
    """Engines that can drop their prefix cache between points do so (vLLM, SGLang, asked
    straight at the replica). llama-cpp-python's server keeps no prompt cache across
    requests unless started with --cache, and offers no call to clear one."""
    path = {"vllm": "/reset_prefix_cache", "sglang": "/flush_cache"}.get(bench.deployment.engine)
    if bench.target != Target.REPLICA or path is None:
        return None

    def reset() -> None:
        import urllib.error
        import urllib.request

        req = urllib.request.Request(  # noqa: S310 - the replica's own http URL, from its row
            base_url + path, method="POST", headers={"Authorization": f"Bearer {key}"}
        )
        try:
            urllib.request.urlopen(req, timeout=10).close()  # noqa: S310
        except (urllib.error.URLError, OSError) as exc:
            log.info("prefix cache reset failed on benchmark %s: %s", bench.pk, exc)

    return reset


def benchmark_run(*, benchmark_id: int) -> Benchmark:
    """Run a queued benchmark. Claiming it is one conditional update, so a task delivered
    twice runs it once; a run already finished is left as it is."""
    claimed = Benchmark.objects.filter(
        pk=benchmark_id, status=RunStatus.QUEUED, cancel_requested=False
    ).update(status=RunStatus.RUNNING, started_at=timezone.now(), phase="starting")
    bench = Benchmark.objects.select_related("deployment__gpu_type", "organization").get(
        pk=benchmark_id
    )
    if not claimed:
        if bench.status == RunStatus.RUNNING and bench.updated_at < timezone.now() - STALE:
            return _lost(bench)
        return bench
    progress = _Progress(bench.pk)
    d = bench.deployment
    points: list[dict] = []
    try:
        base_url, key, replicas = _endpoint(bench)
        where = "the gateway" if bench.target == Target.GATEWAY else "one replica, directly"
        progress.line(
            f"measuring {d.name} through {where}; workload {bench.workload['kind']}, load "
            f"{bench.load['kind']}, seed {bench.seed}; runner {RUNNER_NAME}"
        )
        cents = gpu_hour_cents(d.gpu_type.code)
        gpus = replicas * d.gpus_per_replica

        def on_point(p: Point) -> None:
            p.cost_per_1m_output_tokens = _cost_per_1m(p, cents_per_hour=cents, gpus=gpus)
            points.append(p.as_dict())
            Benchmark.objects.filter(pk=bench.pk).update(points=points)

        measure(
            base_url=base_url,
            api_key=key,
            model=d.name,
            workload=bench.workload,
            load=bench.load,
            slo=bench.slo,
            on_progress=_in_thread(progress),
            should_stop=_in_thread(progress.should_stop),
            before_point=_reset_prefix_cache(bench, base_url, key),
            on_point=_in_thread(on_point),
        )
    except ValidationError as exc:
        return _finish(bench, progress, points, RunStatus.FAILED, error=_message(exc))
    except Exception as exc:  # a failed run says why on its page; the worker carries on
        log.exception("benchmark %s failed", bench.pk)
        return _finish(
            bench, progress, points, RunStatus.FAILED, error=f"{type(exc).__name__}: {exc}"
        )
    finally:
        _revoke_run_key(bench.pk)
    status = RunStatus.CANCELLED if progress.should_stop() else RunStatus.SUCCEEDED
    return _finish(bench, progress, points, status)


def _lost(bench: Benchmark) -> Benchmark:
    """A run with no heartbeat for STALE lost its worker (the task came back to say so):
    it fails with that reason, keeping its points; its key is revoked."""
    minutes = int(STALE.total_seconds() // 60)
    failed = Benchmark.objects.filter(
        pk=bench.pk, status=RunStatus.RUNNING, updated_at__lt=timezone.now() - STALE
    ).update(
        status=RunStatus.FAILED,
        phase="failed",
        error=f"The worker running it stopped (no progress for {minutes} minutes); run it again.",
        finished_at=timezone.now(),
    )
    if failed:
        _revoke_run_key(bench.pk)
    bench.refresh_from_db()
    return bench


def _message(exc: ValidationError) -> str:
    if hasattr(exc, "error_dict"):
        return "; ".join(f"{k}: {' '.join(v)}" for k, v in exc.message_dict.items())
    return " ".join(exc.messages)


def _revoke_run_key(bench_id: int) -> None:
    bench = Benchmark.objects.select_related("api_key").get(pk=bench_id)
    if bench.api_key and bench.api_key.revoked_at is None:
        api_key_revoke(api_key=bench.api_key)


def benchmark_summary(points: list[dict], slo: dict) -> dict:
    meeting = [p for p in points if p.get("meets_slo")]
    if not points:
        return {}
    best = max(meeting, key=lambda p: p["output_tokens_per_s"]) if meeting else None
    return {
        "points": len(points),
        "max_output_tokens_per_s": max(p["output_tokens_per_s"] for p in points),
        "best_under_slo": (
            {k: best[k] for k in ("concurrency", "rate", "output_tokens_per_s", "goodput")}
            if best
            else None
        ),
        "cheapest_per_1m_under_slo": min(
            (p["cost_per_1m_output_tokens"] for p in meeting if p["cost_per_1m_output_tokens"]),
            default=None,
        ),
    }


def _finish(bench, progress: _Progress, points, status, error: str = "") -> Benchmark:
    if status == RunStatus.CANCELLED:
        progress.line(f"cancelled; kept the {len(points)} point(s) finished before")
    elif error:
        progress.line(f"failed: {error}")
    else:
        progress.line(f"done: {len(points)} point(s)")
    done = {"progress": 1.0} if status == RunStatus.SUCCEEDED else {}
    progress.flush(
        status=status,
        phase=str(status),
        **done,
        points=points,
        summary=benchmark_summary(points, bench.slo),
        error=error[:2000],
        finished_at=timezone.now(),
    )
    bench.refresh_from_db()
    return bench
