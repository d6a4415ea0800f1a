"""Weights follow the click: deploying a catalog profile fetches its hub weights into the
region's weights cache (the real hub client against the hub stand-in), shared between
organizations, with progress, retry and recovery."""

import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from deployments.models import Deployment, WeightsFetch
from deployments.services.weights import (
    weights_dir,
    weights_fetch_run,
    weights_fetches_recover,
)
from tests.deployments.conftest import reconcile_until
from tests.gateway.conftest import gateway  # noqa: F401 - fixture
from tests.marketplace.weights_fixtures import (
    GATED_REPO,
    GGUF_FILE,
    GGUF_REPO,
    catalog_entry,
    hub,  # noqa: F401 - fixture
)

DEPLOY = {"model": "tiny-chat", "profile": "cpu-q8"}


def _cached_file(region: str = "local") -> Path:
    return weights_dir() / region / GGUF_REPO.replace("/", "--") / "main" / GGUF_FILE


@pytest.mark.django_db(transaction=True)
def test_cpu_profile_fetches_its_gguf_then_runs_and_answers_through_the_gateway(
    hub,  # noqa: F811
    celery_worker,
    gateway,  # noqa: F811
    org_a,
    api_client_for,
    local_pool,
):
    import openai

    catalog_entry()
    hub.rate[GGUF_REPO] = max(len(hub.gguf) // 3, 1)  # about three seconds: watchable
    api = api_client_for(org_a)
    created = api.post("/api/v1/deployments", DEPLOY, format="json")
    assert created.status_code == 201, created.content
    body = created.json()
    assert body["model_ref"] == f"hub:{GGUF_REPO}@main/{GGUF_FILE}"
    assert body["weights"]["repo"] == GGUF_REPO and body["weights"]["file"] == GGUF_FILE
    url = f"/api/v1/deployments/{body['id']}"

    seen: set[str] = set()
    progress: list[str] = []

    def state() -> str:
        d = api.get(url).json()
        seen.add(d["status"])
        if d["status"] == "fetching":
            progress.append(d["status_reason"])
        return d["status"]

    celery_worker.wait_for(lambda: state() == "running", timeout=120, what="running")
    assert "fetching" in seen, seen
    assert any(p.startswith("fetching weights") and "GB)" in p for p in progress), progress
    final = api.get(url).json()
    assert final["weights"]["status"] == "ready" and final["weights"]["percent"] == 100
    assert final["weights"]["bytes_total"] == len(hub.gguf)
    assert final["weights"]["commit"] == hub.models[GGUF_REPO]["sha"]
    assert _cached_file().read_bytes() == hub.gguf

    client = openai.OpenAI(base_url=gateway.base_url, api_key=api.raw_key)
    answer = client.chat.completions.create(
        model=final["name"],
        messages=[{"role": "user", "content": "hello"}],
        max_tokens=4,
        logit_bias={"2": -100},  # random weights: keep it from stopping at once
    )
    assert answer.usage.completion_tokens > 0
    events = [e["message"] for e in api.get(f"{url}/events").json()["results"]]
    assert any(m.startswith(f"fetching weights {GGUF_REPO}@main") for m in events), events


@pytest.mark.django_db
def test_two_organizations_deploying_one_repo_share_one_fetch(
    hub,  # noqa: F811
    org_a,
    org_b,
    api_client_for,
    local_pool,
):
    catalog_entry()
    first = api_client_for(org_a).post("/api/v1/deployments", DEPLOY, format="json")
    second = api_client_for(org_b).post("/api/v1/deployments", DEPLOY, format="json")
    assert first.status_code == second.status_code == 201, (first.content, second.content)
    fetch = WeightsFetch.objects.get()  # one row: the second click joined the first
    assert set(Deployment.objects.values_list("weights_id", flat=True)) == {fetch.pk}

    assert weights_fetch_run(fetch_id=fetch.pk).status == "ready"
    assert weights_fetch_run(fetch_id=fetch.pk) is None  # run again: nothing to do
    sha = hub.models[GGUF_REPO]["sha"]
    gets = [r for r in hub.requests if r == f"/{GGUF_REPO}/resolve/{sha}/{GGUF_FILE}"]
    assert len(gets) == 1, hub.requests
    assert _cached_file().read_bytes() == hub.gguf

    # A third deploy, later, finds the copy ready and fetches nothing.
    third = api_client_for(org_b).post(
        "/api/v1/deployments", {**DEPLOY, "name": "again"}, format="json"
    )
    assert third.json()["weights"]["status"] == "ready"
    assert WeightsFetch.objects.count() == 1


@pytest.mark.django_db
def test_gated_repo_without_a_token_is_refused_before_anything_is_created(
    hub,  # noqa: F811
    org_a,
    api_client_for,
    local_pool,
):
    catalog_entry(slug="gated-chat", repo=GATED_REPO, gated=True, hf_repo=GATED_REPO)
    api = api_client_for(org_a)
    body = {"model": "gated-chat", "profile": "cpu-q8"}

    refused = api.post("/api/v1/deployments", body, format="json")
    assert refused.status_code == 400, refused.content
    assert "is gated on the hub: it needs a hub token" in refused.json()["model"][0]
    assert not Deployment.objects.exists() and not WeightsFetch.objects.exists()

    # A token without access is refused as clearly, by the hub, still before anything.
    assert api.put("/api/v1/hub-token", {"token": "hf_wrongtoken1"}, format="json").json() == {
        "set": True
    }
    refused = api.post("/api/v1/deployments", body, format="json")
    assert refused.status_code == 400
    assert "token used has no access" in refused.json()["model"][0]
    assert "hf_wrongtoken1" not in refused.content.decode()
    assert not Deployment.objects.exists() and not WeightsFetch.objects.exists()

    # With a token that has access: created, and the fetch uses that organization's token.
    api.put("/api/v1/hub-token", {"token": "hf_gatedaccess123"}, format="json")
    shown = api.get("/api/v1/hub-token")
    assert shown.json() == {"set": True} and "hf_gated" not in shown.content.decode()
    created = api.post("/api/v1/deployments", body, format="json")
    assert created.status_code == 201, created.content
    fetch = WeightsFetch.objects.get()
    assert fetch.token_organization_id == org_a.pk
    assert weights_fetch_run(fetch_id=fetch.pk).status == "ready"


@pytest.mark.django_db
@pytest.mark.parametrize("token", [123, "", "has space in it", "x" * 201, ["hf_a"]])
def test_hub_token_input_is_checked(token, org_a, api_client_for):
    response = api_client_for(org_a).put("/api/v1/hub-token", {"token": token}, format="json")
    if token == "":
        assert response.json() == {"set": False}
    else:
        assert response.status_code == 400 and "token" in response.json()


@pytest.mark.django_db
def test_other_organizations_deployment_weights_answer_404(
    hub,  # noqa: F811
    org_a,
    org_b,
    api_client_for,
    local_pool,
):
    catalog_entry()
    created = api_client_for(org_a).post("/api/v1/deployments", DEPLOY, format="json").json()
    other = api_client_for(org_b)
    assert other.get(f"/api/v1/deployments/{created['id']}").status_code == 404
    retry = other.post(f"/api/v1/deployments/{created['id']}/weights/retry")
    assert retry.status_code == 404


@pytest.mark.django_db
def test_a_failed_fetch_says_why_and_can_be_retried(
    hub,  # noqa: F811
    org_a,
    api_client_for,
    local_pool,
):
    catalog_entry()
    missing = hub.files[GGUF_REPO].pop(GGUF_FILE)
    api = api_client_for(org_a)
    d = Deployment.objects.get(
        pk=api.post("/api/v1/deployments", DEPLOY, format="json").json()["id"]
    )
    assert weights_fetch_run(fetch_id=d.weights_id).status == "failed"
    reconcile_until(d, lambda d: d.status == "failed", what="failed")
    assert "has no such file on the hub" in d.status_reason
    assert not d.replicas.exists()  # nothing started without its weights
    shown = api.get(f"/api/v1/deployments/{d.pk}").json()["weights"]
    assert shown["status"] == "failed" and "no such file" in shown["error"]

    hub.files[GGUF_REPO][GGUF_FILE] = missing
    retried = api.post(f"/api/v1/deployments/{d.pk}/weights/retry")
    assert retried.status_code == 200 and retried.json()["status"] == "fetching"
    assert weights_fetch_run(fetch_id=d.weights_id).status == "ready"
    again = api.post(f"/api/v1/deployments/{d.pk}/weights/retry")
    assert again.status_code == 400 and "Nothing to retry" in again.json()["weights"][0]


@pytest.mark.django_db(transaction=True)
def test_a_fetch_whose_worker_was_killed_is_run_again_and_lands(
    hub,  # noqa: F811
    org_a,
    api_client_for,
    local_pool,
    monkeypatch,
    settings,
):
    import os
    import signal
    import subprocess
    import sys

    from deployments import tasks
    from tests.conftest import database_url_for_subprocess

    catalog_entry()
    api_client_for(org_a).post("/api/v1/deployments", DEPLOY, format="json")
    fetch = WeightsFetch.objects.get()
    hub.rate[GGUF_REPO] = max(len(hub.gguf) // 6, 1)  # about six seconds
    # A worker process starts the fetch and is killed (SIGKILL) half-way.
    env = {
        **os.environ,
        "DATABASE_URL": database_url_for_subprocess(),
        "HF_ENDPOINT": hub.url,
        "GANTRY_MODEL_DIRS": ",".join(settings.GANTRY_MODEL_DIRS),
        "SECRET_KEY": settings.SECRET_KEY,
        "DJANGO_SETTINGS_MODULE": "portal.settings",
    }
    code = (
        "import django; django.setup(); "
        "from deployments.services.weights import weights_fetch_run; "
        f"weights_fetch_run(fetch_id={fetch.pk})"
    )
    root = Path(__file__).resolve().parents[2]
    worker = subprocess.Popen([sys.executable, "-c", code], cwd=root, env=env)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            fetch.refresh_from_db()
            if fetch.bytes_done > len(hub.gguf) // 4:
                break
            time.sleep(0.1)
        assert fetch.status == "fetching" and 0 < fetch.bytes_done < len(hub.gguf)
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=20)
    fetch.refresh_from_db()
    assert fetch.status == "fetching"  # what a killed worker leaves behind

    # While its lease still runs, nobody takes it over.
    monkeypatch.setattr(tasks.fetch_weights, "delay", lambda pk: tasks.fetch_weights.apply((pk,)))
    assert weights_fetches_recover() == {"resumed": 0, "failed": 0}
    partials = Path(fetch.path) / ".cache" / "huggingface" / "download"
    orphans = list(partials.glob("*.incomplete"))
    assert orphans  # what the killed run was writing
    # Once its lease ran out, the beat task hands it to a new run.
    hub.rate.pop(GGUF_REPO)
    settings.WEIGHTS_FETCH_LEASE_S = 1
    time.sleep(1.2)
    assert weights_fetches_recover() == {"resumed": 1, "failed": 0}
    fetch.refresh_from_db()
    assert fetch.status == "ready" and fetch.attempts == 2
    assert fetch.bytes_done == fetch.bytes_total == len(hub.gguf)
    assert _cached_file().read_bytes() == hub.gguf
    assert not any(p.exists() for p in orphans)  # the dead run's partial file is gone
    assert weights_fetches_recover() == {"resumed": 0, "failed": 0}  # nothing more to do

    # After too many dead workers it fails, saying so.
    stale = timezone.now() - timedelta(minutes=1)
    WeightsFetch.objects.filter(pk=fetch.pk).update(
        status="fetching", heartbeat_at=stale, attempts=settings.WEIGHTS_FETCH_ATTEMPTS
    )
    assert weights_fetches_recover() == {"resumed": 0, "failed": 1}
    fetch.refresh_from_db()
    assert fetch.status == "failed" and "stopped" in fetch.error


def test_progress_reads_like_a_person_would_say_it():
    f = WeightsFetch(status="fetching", bytes_done=2_100_000_000, bytes_total=5_600_000_000)
    assert f.progress_text == "fetching weights 37% (2.1 of 5.6 GB)"


@pytest.mark.django_db
def test_a_vllm_profile_fetches_the_safetensors_snapshot_into_the_region_cache(
    hub,  # noqa: F811
    org_a,
    api_client_for,
):
    from deployments.models import GpuType
    from marketplace.models import ServingProfile
    from tests.deployments.conftest import make_pool, make_region

    repo = "gantry-test/Tiny-Chat"
    files = {
        "config.json": b'{"architectures": ["LlamaForCausalLM"]}',
        "model.safetensors": bytes(3 << 20),
        "tokenizer.json": b"{}",
        "README.md": b"# not needed to serve",
    }
    hub.add_model(repo, license="apache-2.0")
    hub.add_files(repo, files)
    make_pool(make_region("eu-west"), "h100", "h100-80gb", [("n1", 8)], driver="kubernetes")
    model = catalog_entry()
    ServingProfile.objects.create(
        model=model,
        name="h100-bf16",
        engine="vllm",
        gpu_type=GpuType.objects.get(code="h100-80gb"),
        quantization="bf16",
        max_model_len=512,
        fits=True,
    )
    created = api_client_for(org_a).post(
        "/api/v1/deployments", {"model": "tiny-chat", "profile": "h100-bf16"}, format="json"
    )
    assert created.status_code == 201, created.content
    assert created.json()["model_ref"] == f"hub:{repo}@main"
    fetch = WeightsFetch.objects.get()
    assert (fetch.region.code, fetch.repo, fetch.filename) == ("eu-west", repo, "")

    fetch = weights_fetch_run(fetch_id=fetch.pk)
    assert fetch.status == "ready", fetch.error
    folder = weights_dir() / "eu-west" / "gantry-test--Tiny-Chat" / "main"
    assert Path(fetch.path) == folder
    assert sorted(fetch.files) == ["config.json", "model.safetensors", "tokenizer.json"]
    assert (folder / "model.safetensors").read_bytes() == files["model.safetensors"]
    assert not (folder / "README.md").exists()
    assert (
        fetch.bytes_done
        == fetch.bytes_total
        == sum(len(files[n]) for n in ("config.json", "model.safetensors", "tokenizer.json"))
    )
    # A replica in eu-west loads the folder.
    from deployments.services.weights import weights_model_path

    d = Deployment.objects.get()
    assert weights_model_path(d, fetch.region_id) == str(folder)


@pytest.mark.django_db
def test_a_deployment_in_two_regions_waits_for_both_copies_and_loads_its_regions_own(
    hub,  # noqa: F811
    org_a,
    api_client_for,
    local_pool,
):
    from deployments.services.weights import weights_wait
    from tests.deployments.conftest import make_pool, make_region

    make_pool(make_region("local-2"), "cpu", "cpu", [("localhost-2", 4)])
    catalog_entry()
    created = api_client_for(org_a).post(
        "/api/v1/deployments", {**DEPLOY, "regions": ["local", "local-2"]}, format="json"
    )
    assert created.status_code == 201, created.content
    d = Deployment.objects.get()
    first, second = WeightsFetch.objects.order_by("region__code")
    assert d.weights_id == first.pk and first.path != second.path
    weights_fetch_run(fetch_id=first.pk)
    state, text = weights_wait(d)
    assert state == "fetching" and text.startswith("fetching weights")
    reconcile_until(d, lambda d: d.status == "fetching", what="fetching")
    assert not d.replicas.exists()

    weights_fetch_run(fetch_id=second.pk)
    reconcile_until(d, lambda d: d.status == "running", what="running")
    replica = d.replicas.get(status="running")
    from deployments.services.reconcile import _spec

    own = WeightsFetch.objects.get(region=replica.region)
    assert _spec(d, replica).model_ref == str(Path(own.path) / GGUF_FILE)


@pytest.mark.django_db
@pytest.mark.parametrize(
    "ref",
    [
        f"hub:{GGUF_REPO}@main/other.gguf",  # a file the catalog does not name
        "hub:someone/private@main/x.gguf",
        f"hub:{GGUF_REPO}@main/../../etc/passwd",
        f"hub:{GGUF_REPO}@mai",  # an abbreviation
        f" hub:{GGUF_REPO}@main/{GGUF_FILE}x",
    ],
)
def test_raw_deploys_may_name_only_the_hub_weights_the_catalog_names(
    ref,
    hub,  # noqa: F811
    org_a,
    api_client_for,
    local_pool,
):
    catalog_entry()
    body = {"name": "raw", "model_ref": ref, "gpu_type": "cpu", "regions": ["local"]}
    response = api_client_for(org_a).post("/api/v1/deployments", body, format="json")
    assert response.status_code == 400, response.content
    assert "model_ref" in response.json()
    assert not Deployment.objects.exists() and not WeightsFetch.objects.exists()


@pytest.mark.django_db
def test_a_raw_deploy_of_a_catalog_hub_ref_fetches_it_too(
    hub,  # noqa: F811
    org_a,
    api_client_for,
    local_pool,
):
    catalog_entry()
    body = {
        "name": "raw",
        "model_ref": f"hub:{GGUF_REPO}@main/{GGUF_FILE}",
        "gpu_type": "cpu",
        "regions": ["local"],
    }
    response = api_client_for(org_a).post("/api/v1/deployments", body, format="json")
    assert response.status_code == 201, response.content
    assert response.json()["weights"]["file"] == GGUF_FILE
    assert WeightsFetch.objects.get().pk == Deployment.objects.get().weights_id
