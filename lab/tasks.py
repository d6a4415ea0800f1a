from celery import shared_task


@shared_task(acks_late=True, reject_on_worker_lost=True)
def run_tuning(tuning_id: int) -> None:
    # Long (one trial after another), and re-entrant: a redelivered run resumes from the
    # recorded trials and tears down whatever a killed run left starting.
    from lab.tuning_run import tuning_run

    tuning_run(tuning_id=tuning_id)
