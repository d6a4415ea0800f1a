from datetime import timedelta

import openai
import pytest
from django.utils import timezone

from deployments.engines import DEMO_MODEL_REF
from deployments.models import Deployment, DeploymentLoad
from deployments.services import autoscale, deployment_create, deployment_scale
from tests.conftest import owner_of
from tests.deployments.conftest import reconcile_until

pytestmark = pytest.mark.django_db(transaction=True)


def _deployment(org, **kw):
    return deployment_create(
        organization=org,
        user=owner_of(org),
        name="auto",
        model_ref=DEMO_MODEL_REF,
        gpu_type="cpu",
        regions=["local"],
        engine_args=["--n_ctx", "256"],
        **kw,
    )


def test_scales_up_under_load_and_down_to_zero_when_idle_by_the_clock(org_a, local_pool):
    d = _deployment(org_a, min_replicas=1, max_replicas=3)
    Deployment.objects.filter(pk=d.pk).update(autoscale_target=4, scale_to_zero_after_s=300)
    now = timezone.now()
    DeploymentLoad.objects.create(deployment=d, in_flight=9, last_request_at=now)
    assert autoscale(now=now) == 1
    d.refresh_from_db()
    assert d.desired_replicas == 3  # ceil(9 / 4) = 3, within max
    assert d.events.filter(
        kind="autoscaled", message="scaled 1 → 3 (9 requests in flight, target 4 per replica)"
    ).exists()
    DeploymentLoad.objects.filter(deployment=d).update(in_flight=0)
    assert autoscale(now=now + timedelta(seconds=30)) == 1
    d.refresh_from_db()
    assert d.desired_replicas == 1  # quiet, but not idle long enough to sleep
    assert autoscale(now=now + timedelta(seconds=301)) == 1
    d.refresh_from_db()
    assert d.desired_replicas == 0 and d.asleep  # a request may wake it
    assert d.events.filter(
        kind="autoscaled", message__startswith="scaled 1 → 0 (no requests for 301 s)"
    ).exists()


def test_autoscale_respects_the_quota_and_says_so(org_a, local_pool):
    from billing.models import GpuQuota, Quota

    quota = Quota.objects.create(organization=org_a)
    GpuQuota.objects.create(quota=quota, gpu_type="cpu", max_gpus=2)
    d = _deployment(org_a, min_replicas=1, max_replicas=4)
    Deployment.objects.filter(pk=d.pk).update(autoscale_target=1)
    DeploymentLoad.objects.create(deployment=d, in_flight=4, last_request_at=timezone.now())
    assert autoscale() == 0
    assert Deployment.objects.get(pk=d.pk).desired_replicas == 1
    assert d.events.filter(kind="autoscale_blocked", message__contains="GPU quota").exists()


def put_to_sleep(d):
    """The autoscaler's way to zero: no request for longer than the deployment allows."""
    Deployment.objects.filter(pk=d.pk).update(scale_to_zero_after_s=60)
    now = timezone.now()
    DeploymentLoad.objects.update_or_create(
        deployment=d, defaults={"in_flight": 0, "last_request_at": now - timedelta(seconds=61)}
    )
    assert autoscale(now=now) == 1
    reconcile_until(d, lambda d: d.status == "stopped", what="asleep")
    assert Deployment.objects.get(pk=d.pk).asleep


def test_first_request_wakes_a_deployment_scaled_to_zero(
    gateway, celery_worker, org_a, local_pool, api_client_for, make_user, add_member
):
    from portal.models import Role

    d = _deployment(org_a, min_replicas=0, max_replicas=1)
    reconcile_until(d, lambda d: d.status == "running", what="running")
    put_to_sleep(d)
    # Any key may wake it, even one of a member whose role cannot deploy.
    clerk = make_user("clerk")
    add_member(org_a, clerk, Role.BILLING)
    client = openai.OpenAI(
        base_url=gateway.base_url, api_key=api_client_for(org_a, clerk).raw_key, max_retries=0
    )
    with pytest.raises(openai.InternalServerError) as exc:  # no wait asked: 503 at once
        client.chat.completions.create(
            model="auto", max_tokens=2, messages=[{"role": "user", "content": "hi"}]
        )
    assert exc.value.status_code == 503 and exc.value.body["code"] == "model_waking"
    d.refresh_from_db()
    assert d.desired_replicas == 1 and not d.asleep
    assert d.events.filter(kind="autoscaled", message="woken by a request: scaled 0 → 1").exists()
    # A client willing to wait gets its answer once the worker has the replica running.
    answer = client.chat.completions.create(
        model="auto",
        max_tokens=2,
        logit_bias={"2": -100},
        messages=[{"role": "user", "content": "hi"}],
        extra_headers={"X-Scale-Up-Timeout": "90"},
    )
    assert answer.usage.prompt_tokens > 0
    assert DeploymentLoad.objects.get(deployment=d).last_request_at is not None


def test_a_deployment_a_person_stopped_is_never_woken_by_a_request(
    gateway, celery_worker, org_a, local_pool, api_client_for
):
    d = _deployment(org_a, min_replicas=0, max_replicas=1)
    reconcile_until(d, lambda d: d.status == "running", what="running")
    put_to_sleep(d)
    deployment_scale(deployment=d, replicas=0)  # then its owner stops it for good
    d.refresh_from_db()
    assert d.desired_replicas == 0 and not d.asleep
    client = openai.OpenAI(
        base_url=gateway.base_url, api_key=api_client_for(org_a).raw_key, max_retries=0
    )
    for wait in ("0", "3"):
        with pytest.raises(openai.InternalServerError) as exc:
            client.chat.completions.create(
                model="auto",
                max_tokens=2,
                messages=[{"role": "user", "content": "hi"}],
                extra_headers={"X-Scale-Up-Timeout": wait},
            )
        assert exc.value.status_code == 503 and exc.value.body["code"] == "model_stopped"
    d.refresh_from_db()
    assert d.desired_replicas == 0 and d.status == "stopped"
    assert not d.events.filter(message__startswith="woken by a request").exists()
    # Nor by the service called directly: only sleep is woken.
    from deployments.services import deployment_wake

    assert deployment_wake(deployment_id=d.pk) is False
