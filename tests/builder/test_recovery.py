"""Builds and weights fetches whose worker died are failed with the reason, never left
"building" or "fetching" forever; live ones keep their lease and are left alone."""

import json
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from builder.models import Build, BuildStatus, WeightsCache
from builder.recovery import BUILD_LOST, FETCH_LOST, lease, stuck_jobs_recover
from builder.tasks import recover_stuck_builds
from builder.weights import weights_cache_for
from deployments.engines import PROGRESS_FILE
from tests.builder.conftest import gguf_build


def _building(build: Build, *, heartbeat_age_s: float) -> Build:
    now = timezone.now()
    Build.objects.filter(pk=build.pk).update(
        status=BuildStatus.BUILDING,
        phase="making image",
        log="$ spec abc\n",
        started_at=now - timedelta(seconds=heartbeat_age_s + 5),
        heartbeat_at=now - timedelta(seconds=heartbeat_age_s),
    )
    return Build.objects.get(pk=build.pk)


def test_a_build_whose_worker_stopped_is_failed_with_the_reason(
    settings, org_a, org_b, demo_gguf, local_pool, api_client_for, db
):
    settings.BUILDER_LEASE_S = 120
    lost = _building(gguf_build(org_a, demo_gguf, "lost"), heartbeat_age_s=121)
    live = _building(gguf_build(org_a, demo_gguf, "live"), heartbeat_age_s=30)
    # The beat task, as celery beat runs it, twice: the second run finds nothing to do.
    assert recover_stuck_builds.apply().get() == {"builds": 1, "weights": 0}
    assert recover_stuck_builds.apply().get() == {"builds": 0, "weights": 0}

    body = api_client_for(org_a).get(f"/api/v1/builds/{lost.pk}").json()
    assert body["status"] == "failed" and body["phase"] == "failed"
    assert body["error"] == BUILD_LOST
    assert body["log_tail"].endswith(f"BUILD FAILED: {BUILD_LOST}")
    assert "$ spec abc" in body["log_tail"]  # what was logged before is kept
    assert Build.objects.get(pk=live.pk).status == BuildStatus.BUILDING
    assert api_client_for(org_b).get(f"/api/v1/builds/{lost.pk}").status_code == 404


def test_a_build_that_never_renewed_counts_from_its_last_update(org_a, demo_gguf, local_pool, db):
    build = gguf_build(org_a, demo_gguf, "old")
    Build.objects.filter(pk=build.pk).update(status=BuildStatus.BUILDING, heartbeat_at=None)
    updated_at = Build.objects.get(pk=build.pk).updated_at
    assert stuck_jobs_recover(now=updated_at + timedelta(seconds=60)) == {"builds": 0, "weights": 0}
    assert stuck_jobs_recover(now=updated_at + timedelta(hours=1))["builds"] == 1
    assert Build.objects.get(pk=build.pk).error == BUILD_LOST


def test_finished_and_queued_builds_are_never_touched(org_a, demo_gguf, local_pool, db):
    old = timezone.now() - timedelta(days=1)
    for name, status in (("done", BuildStatus.SUCCEEDED), ("waiting", BuildStatus.QUEUED)):
        build = gguf_build(org_a, demo_gguf, name)
        Build.objects.filter(pk=build.pk).update(status=status, heartbeat_at=old)
    assert stuck_jobs_recover() == {"builds": 0, "weights": 0}
    assert set(Build.objects.values_list("status", flat=True)) == {"succeeded", "queued"}


def test_a_weights_fetch_whose_worker_stopped_is_failed_and_its_waiters_told(
    settings, org_a, demo_gguf, local_pool, db
):
    build = gguf_build(org_a, demo_gguf, "weights")
    cache = weights_cache_for(build)
    folder = Path(cache.path)
    folder.mkdir(parents=True)
    (folder / PROGRESS_FILE).write_text(json.dumps({"status": "fetching"}))
    WeightsCache.objects.filter(pk=cache.pk).update(
        status=WeightsCache.Status.FETCHING,
        bytes_done=10,
        bytes_total=100,
        heartbeat_at=timezone.now() - timedelta(seconds=settings.BUILDER_LEASE_S + 1),
    )
    assert stuck_jobs_recover() == {"builds": 0, "weights": 1}
    assert stuck_jobs_recover() == {"builds": 0, "weights": 0}
    cache.refresh_from_db()
    assert cache.status == WeightsCache.Status.FAILED and cache.error == FETCH_LOST
    # Deployments waiting on these weights read the progress file beside them.
    progress = json.loads((folder / PROGRESS_FILE).read_text())
    assert progress["status"] == "failed" and progress["error"] == FETCH_LOST


@pytest.mark.django_db(transaction=True)
def test_a_running_job_renews_its_lease_and_is_left_alone(settings, org_a, demo_gguf, local_pool):
    settings.BUILDER_LEASE_S = 0.4  # renewed every 0.1 s
    build = _building(gguf_build(org_a, demo_gguf, "busy"), heartbeat_age_s=3600)
    with lease(Build, build.pk):
        first = Build.objects.get(pk=build.pk).heartbeat_at
        assert first > timezone.now() - timedelta(seconds=5)
        seen = {first}
        while len(seen) < 3:  # two renewals by the lease's own thread
            seen.add(Build.objects.get(pk=build.pk).heartbeat_at)
            time.sleep(0.02)
        assert stuck_jobs_recover(now=max(seen)) == {"builds": 0, "weights": 0}
    assert Build.objects.get(pk=build.pk).status == BuildStatus.BUILDING
