from celery import shared_task


# No autoretry: a benchmark that failed half-way says why on its page; running it again
# would measure a different moment. A redelivered task finds it claimed and does nothing.
@shared_task(acks_late=True, reject_on_worker_lost=True)
def run_benchmark(benchmark_id: int) -> str:
    from lab.services import benchmark_run

    return benchmark_run(benchmark_id=benchmark_id).status
