from celery import shared_task

from lab.services import STALE


# No autoretry: a benchmark that failed half-way says why on its page; running it again
# would measure a different moment. A task delivered again (its worker was lost) finds the
# run claimed: it looks again once the run's heartbeat would have gone stale, and then
# fails a run whose worker is gone.
@shared_task(acks_late=True, reject_on_worker_lost=True)
def run_benchmark(benchmark_id: int) -> str:
    from lab.services import benchmark_run

    status = benchmark_run(benchmark_id=benchmark_id).status
    if status == "running":
        run_benchmark.apply_async((benchmark_id,), countdown=STALE.total_seconds() + 5)
    return status


@shared_task(acks_late=True, reject_on_worker_lost=True)
def run_tuning(tuning_id: int) -> None:
    # Long (one trial after another), and re-entrant: a redelivered run resumes from the
    # recorded trials and tears down whatever a killed run left starting.
    from lab.tuning_run import tuning_run

    tuning_run(tuning_id=tuning_id)
