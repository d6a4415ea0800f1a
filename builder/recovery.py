"""Builds and weights fetches never stay "building" or "fetching" after their worker died.

While a worker runs one, it renews a lease on the row (``heartbeat_at``) from a thread of
its own, so a long quiet step (a large download, a push) still renews it. A worker killed
mid-way (OOM, SIGKILL, a lost machine) stops renewing; a beat task then finds the rows
whose lease ran out and fails them with that reason, so the page says what happened and
the user can start again. A broker that redelivers the killed task (acks_late) simply
runs it again: both jobs are idempotent, and a run renews the lease as it starts.
"""

import contextlib
import logging
import threading
from datetime import datetime, timedelta
from pathlib import Path

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Q, TextField, Value
from django.db.models.functions import Concat
from django.utils import timezone

from builder.models import Build, BuildStatus, WeightsCache

log = logging.getLogger(__name__)

BUILD_LOST = "The worker running this build stopped before it finished; start the build again."
FETCH_LOST = "The worker fetching these weights stopped before it finished."


def _renew(model, pk: int) -> None:
    # skip_locked: the job's own transaction may hold the row; a renewal never waits on
    # it (a blocked renewal would block the job's end, which joins this thread).
    with transaction.atomic():
        ids = list(
            model.objects.filter(pk=pk).select_for_update(skip_locked=True).values_list("pk")
        )
        if ids:
            model.objects.filter(pk=pk).update(heartbeat_at=timezone.now())


@contextlib.contextmanager
def lease(model, pk: int):
    """Hold the lease of one Build or WeightsCache row while the block runs."""
    model.objects.filter(pk=pk).update(heartbeat_at=timezone.now())
    stop = threading.Event()
    every = max(settings.BUILDER_LEASE_S / 4, 0.05)

    def renew() -> None:
        try:
            while not stop.wait(every):
                try:
                    _renew(model, pk)
                except Exception:  # a database hiccup must not kill the job it watches
                    log.warning("could not renew the lease of %s %s", model.__name__, pk)
        finally:
            connection.close()

    thread = threading.Thread(target=renew, name=f"lease-{model.__name__}-{pk}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _expired(now: datetime) -> Q:
    """Rows whose lease ran out; a row that never had one counts from its last update."""
    cutoff = now - timedelta(seconds=settings.BUILDER_LEASE_S)
    return Q(heartbeat_at__lt=cutoff) | Q(heartbeat_at__isnull=True, updated_at__lt=cutoff)


def stuck_jobs_recover(*, now: datetime | None = None) -> dict[str, int]:
    """Fail every build and weights fetch whose worker stopped renewing its lease.
    Idempotent: a second run finds nothing more to do."""
    from builder.weights import progress_write

    now = now or timezone.now()
    # One conditional UPDATE per row: a worker that finished or renewed meanwhile no
    # longer matches, so a live build is never failed.
    failed_builds = 0
    for pk in Build.objects.filter(_expired(now), status=BuildStatus.BUILDING).values_list(
        "pk", flat=True
    ):
        failed_builds += Build.objects.filter(
            _expired(now), pk=pk, status=BuildStatus.BUILDING
        ).update(
            status=BuildStatus.FAILED,
            phase="failed",
            error=BUILD_LOST,
            log=Concat("log", Value(f"\nBUILD FAILED: {BUILD_LOST}\n"), output_field=TextField()),
            finished_at=now,
        )
        log.warning("build %s failed: its worker stopped", pk)
    failed_fetches = 0
    for cache in WeightsCache.objects.filter(
        _expired(now), status=WeightsCache.Status.FETCHING
    ).only("pk", "path", "bytes_done", "bytes_total"):
        updated = WeightsCache.objects.filter(
            _expired(now), pk=cache.pk, status=WeightsCache.Status.FETCHING
        ).update(status=WeightsCache.Status.FAILED, error=FETCH_LOST)
        if not updated:
            continue
        # Deployments waiting for these weights read this file (they know nothing of builds).
        folder = Path(cache.path)
        if folder.is_dir():
            progress_write(folder, "failed", cache.bytes_done, cache.bytes_total, error=FETCH_LOST)
        failed_fetches += 1
        log.warning("weights %s failed: their worker stopped", cache.pk)
    return {"builds": failed_builds, "weights": failed_fetches}
