"""The Celery application. Broker and options come from Django settings (CELERY_*)."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")

app = Celery("gantry")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

# Periodic work. Each entry calls a thin task that loads ids and calls a service.
from django.conf import settings  # noqa: E402

app.conf.beat_schedule = {
    "reconcile-all-deployments": {
        "task": "deployments.tasks.reconcile_all",
        "schedule": float(settings.RECONCILE_INTERVAL_S),
    },
    "sync-catalog": {
        "task": "marketplace.tasks.sync_catalog",
        "schedule": float(settings.CATALOG_SYNC_INTERVAL_S),
    },
    "close-last-month-invoices": {
        "task": "billing.tasks.close_last_month",
        "schedule": 3600.0,  # idempotent: closed invoices stay as they are
    },
    "autoscale": {
        "task": "deployments.tasks.autoscale_deployments",
        "schedule": 15.0,
    },
    "scrape-engine-signals": {
        "task": "deployments.tasks.scrape_engine_signals",
        "schedule": float(settings.ENGINE_SIGNALS_INTERVAL_S),
    },
    "enforce-spend-limits": {
        "task": "deployments.tasks.enforce_spend_limits",
        "schedule": 60.0,
    },
    "prune-deployment-events": {
        "task": "deployments.tasks.prune_events",
        "schedule": 3600.0,  # idempotent: a second run finds nothing past the bounds
    },
    "recover-weights-fetches": {
        "task": "deployments.tasks.recover_weights_fetches",
        "schedule": 60.0,  # idempotent: a fetch with a live worker is left alone
    },
    "check-pools": {
        "task": "deployments.tasks.check_pools",
        "schedule": 30.0,
    },
    "recover-stuck-builds": {
        "task": "builder.tasks.recover_stuck_builds",
        "schedule": float(settings.BUILDER_LEASE_S) / 2,
    },
    "purge-expired-invitations": {
        "task": "portal.tasks.purge_expired_invitations",
        "schedule": 3600.0,
    },
}
