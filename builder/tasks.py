from celery import shared_task


@shared_task(acks_late=True, reject_on_worker_lost=True)
def run_build(build_id: int) -> str:
    from builder.images import build_run

    return build_run(build_id=build_id).status


@shared_task(
    acks_late=True,
    reject_on_worker_lost=True,
    autoretry_for=(OSError,),
    retry_backoff=True,
    max_retries=5,
)
def prefetch_weights(cache_id: int, build_id: int) -> str:
    from builder.weights import weights_prefetch

    return weights_prefetch(cache_id=cache_id, build_id=build_id).status


@shared_task
def recover_stuck_builds() -> dict:
    from builder.recovery import stuck_jobs_recover

    return stuck_jobs_recover()
