"""Timeline retention: each deployment keeps its newest events, up to a cap and an age."""

import re
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.utils import timezone

from deployments.engines import DEMO_MODEL_REF
from deployments.models import DeploymentEvent
from deployments.services import deployment_create, event, events_prune
from deployments.tasks import prune_events
from tests.conftest import owner_of

ROOT = Path(__file__).resolve().parents[2]


def _deployment(org, name):
    return deployment_create(
        organization=org,
        user=owner_of(org),
        name=name,
        model_ref=DEMO_MODEL_REF,
        gpu_type="cpu",
        regions=["local"],
    )


def _messages(deployment) -> list[str]:
    return list(
        DeploymentEvent.objects.filter(deployment=deployment)
        .order_by("-at", "-id")
        .values_list("message", flat=True)
    )


def test_each_deployment_keeps_only_its_newest_events_up_to_the_cap(org_a, org_b, local_pool):
    busy, quiet = _deployment(org_a, "busy"), _deployment(org_b, "quiet")
    for i in range(12):
        event(busy, "note", f"busy {i}")
    event(quiet, "note", "quiet 0")

    deleted = events_prune(keep=5, max_age_days=0)

    # busy had 13 (its "created" event and 12 notes): the 8 oldest go, the newest 5 stay.
    assert deleted == 8
    assert _messages(busy) == [f"busy {i}" for i in range(11, 6, -1)]
    # Another deployment (another organization's) under the cap loses nothing.
    assert len(_messages(quiet)) == 2
    assert events_prune(keep=5, max_age_days=0) == 0, "a second run deletes nothing more"


def test_events_that_share_a_timestamp_are_cut_in_timeline_order(org_a, local_pool):
    d = _deployment(org_a, "same-time")
    DeploymentEvent.objects.filter(deployment=d).delete()
    for i in range(6):
        event(d, "note", f"n{i}")
    DeploymentEvent.objects.filter(deployment=d).update(at=timezone.now())

    events_prune(keep=4, max_age_days=0)

    assert _messages(d) == ["n5", "n4", "n3", "n2"]


def test_events_older_than_the_age_are_pruned_and_recent_ones_kept(org_a, local_pool):
    d = _deployment(org_a, "aged")
    old = event(d, "note", "last quarter")
    DeploymentEvent.objects.filter(pk=old.pk).update(at=timezone.now() - timedelta(days=91))
    event(d, "note", "today")

    assert events_prune(keep=0, max_age_days=90) == 1
    assert "last quarter" not in _messages(d) and "today" in _messages(d)


def test_zero_turns_both_bounds_off(org_a, local_pool):
    d = _deployment(org_a, "kept")
    old = event(d, "note", "ancient")
    DeploymentEvent.objects.filter(pk=old.pk).update(at=timezone.now() - timedelta(days=3650))
    assert events_prune(keep=0, max_age_days=0) == 0
    assert "ancient" in _messages(d)


def test_the_beat_task_applies_the_settings(org_a, local_pool, settings):
    settings.EVENTS_KEEP_PER_DEPLOYMENT = 3
    settings.EVENTS_MAX_AGE_DAYS = 90
    d = _deployment(org_a, "beat")
    for i in range(5):
        event(d, "note", f"b{i}")

    assert prune_events.apply().get() == 3
    assert _messages(d) == ["b4", "b3", "b2"]


def test_retention_settings_are_documented_and_scheduled():
    from portal.celery import app

    env_example = (ROOT / ".env.example").read_text()
    readme = (ROOT / "README.md").read_text()
    for name in ("EVENTS_KEEP_PER_DEPLOYMENT", "EVENTS_MAX_AGE_DAYS"):
        default = str(getattr(settings, name))
        assert re.search(rf"^#?\s*{name}={default}\b", env_example, re.M), name
        assert f"| `{name}` | `{default}` |" in readme, name
    tasks = {entry["task"] for entry in app.conf.beat_schedule.values()}
    assert "deployments.tasks.prune_events" in tasks
