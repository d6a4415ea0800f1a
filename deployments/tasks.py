"""Celery tasks of deployments: thin, they take ids and call a service.

Services import tasks (to queue a reconcile after a commit), so the tasks import services
inside their bodies: importing them at the top would make the two modules a cycle.
"""

from celery import shared_task
from django.conf import settings

from deployments.drivers import DriverUnavailable
from deployments.models import GpuPool


@shared_task(
    acks_late=True,
    reject_on_worker_lost=True,
    autoretry_for=(DriverUnavailable,),
    retry_backoff=True,
    max_retries=5,
)
def reconcile_deployment(deployment_id: int) -> str:
    from deployments.services import deployment_reconcile

    result = deployment_reconcile(deployment_id=deployment_id)
    # Follow a deployment closely while it moves (a replica starting, a short backoff).
    # Longer waits are the beat sweep's: chaining them too would multiply the tasks.
    if result.requeue_in is not None and result.requeue_in < settings.RECONCILE_INTERVAL_S:
        reconcile_deployment.apply_async((deployment_id,), countdown=result.requeue_in)
    return result.status or ("busy" if result.busy else "")


@shared_task(acks_late=True)
def reconcile_all() -> int:
    from deployments.services import deployments_needing_reconcile

    ids = deployments_needing_reconcile()
    for deployment_id in ids:
        reconcile_deployment.delay(deployment_id)
    return len(ids)


@shared_task(acks_late=True)
def check_pools() -> int:
    from deployments.services import pool_check

    pools = list(GpuPool.objects.filter(enabled=True))
    for pool in pools:
        pool_check(pool=pool)
    return len(pools)


@shared_task(acks_late=True)
def enforce_spend_limits() -> int:
    from deployments.services import spend_limits_enforce

    return spend_limits_enforce()


@shared_task(acks_late=True)
def autoscale_deployments() -> int:
    from deployments.services import autoscale

    return autoscale()


@shared_task(acks_late=True)
def scrape_engine_signals() -> int:
    from deployments.services import engine_signals_scrape

    return engine_signals_scrape()


@shared_task(acks_late=True)
def prune_events() -> int:
    from deployments.services import events_prune

    return events_prune()


@shared_task(acks_late=True, reject_on_worker_lost=True)
def fetch_weights(fetch_id: int) -> str:
    from deployments.services.weights import weights_fetch_run

    fetch = weights_fetch_run(fetch_id=fetch_id)
    return fetch.status if fetch else "not claimed"


@shared_task(acks_late=True)
def recover_weights_fetches() -> dict:
    from deployments.services.weights import weights_fetches_recover

    return weights_fetches_recover()
