from celery import shared_task


# No autoretry: a benchmark that failed half-way says why on its page; running it again
# would measure a different moment. A redelivered task finds it claimed and does nothing.
@shared_task(acks_late=True, reject_on_worker_lost=True)
def run_benchmark(benchmark_id: int) -> str:
    from lab.services import benchmark_run

    return benchmark_run(benchmark_id=benchmark_id).status


@shared_task(acks_late=True, reject_on_worker_lost=True)
def run_tuning(tuning_id: int) -> None:
    # Long (one trial after another), and re-entrant: a redelivered run resumes from the
    # recorded trials and tears down whatever a killed run left starting.
    from lab.tuning_run import tuning_run

    tuning_run(tuning_id=tuning_id)
