"""The deployment timeline and the hand-off to the reconciler.

Owns: writing ``DeploymentEvent`` rows, their retention (``events_prune``, hourly on beat)
and queueing a reconcile after a commit.

Invariants:
* Every change of desired or actual state is told as one event, written in the same
  transaction as the change, so the timeline never shows what did not happen.
* A reconcile is only queued ``on_commit``: a worker never reads a deployment before the
  change that asked for it is visible (and a rolled-back change queues nothing).
* Retention is a bound, never a gap: pruning deletes only the oldest events of a timeline
  (past the cap or the age), so what is kept is always its most recent stretch.
"""

import logging
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Count, Q
from django.utils import timezone

from deployments.models import Deployment, DeploymentEvent, Replica
from deployments.tasks import reconcile_deployment

log = logging.getLogger("deployments.services")


def event(
    deployment: Deployment, kind: str, message: str, replica: Replica | None = None
) -> DeploymentEvent:
    log.info("deployment %s %s: %s", deployment.pk, kind, message)
    return DeploymentEvent.objects.create(
        deployment=deployment, replica=replica, kind=kind, message=message
    )


def enqueue_reconcile(deployment_id: int) -> None:
    transaction.on_commit(lambda: reconcile_deployment.delay(deployment_id))


def events_prune(*, keep: int | None = None, max_age_days: int | None = None) -> int:
    """Apply the timeline retention: per deployment, keep the newest `keep` events and none
    older than `max_age_days` (settings by default; 0 turns a bound off). Returns how many
    events were deleted. Running it again deletes nothing more."""
    keep = settings.EVENTS_KEEP_PER_DEPLOYMENT if keep is None else keep
    days = settings.EVENTS_MAX_AGE_DAYS if max_age_days is None else max_age_days
    deleted = 0
    if days > 0:
        cutoff = timezone.now() - timedelta(days=days)
        deleted += DeploymentEvent.objects.filter(at__lt=cutoff).delete()[0]
    if keep > 0:
        over = (
            DeploymentEvent.objects.values("deployment_id")
            .annotate(n=Count("id"))
            .filter(n__gt=keep)
            .values_list("deployment_id", flat=True)
        )
        for deployment_id in list(over):
            # The timeline's own order (newest first by time, then id): the `keep`-th row
            # is the oldest kept; everything strictly after it in that order goes.
            last_kept = (
                DeploymentEvent.objects.filter(deployment_id=deployment_id)
                .order_by("-at", "-id")
                .values("at", "id")[keep - 1]
            )
            older = Q(at__lt=last_kept["at"]) | Q(at=last_kept["at"], id__lt=last_kept["id"])
            gone, _ = DeploymentEvent.objects.filter(older, deployment_id=deployment_id).delete()
            deleted += gone
    return deleted
