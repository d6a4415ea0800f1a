"""A tenant attacking the data plane through the API and the browser form: engine flags,
images and model files it has no right to. Every attempt is a 4xx naming the field, with
nothing written and nothing started; the happy path still runs a real llama.cpp replica."""

import os
from pathlib import Path

import pytest
from django.conf import settings
from django.urls import reverse

from builder.models import Build, BuildStatus, Upload
from deployments.artifacts import MODEL_REFUSED
from deployments.demo_model import write_demo_gguf
from deployments.engines import DEMO_MODEL_REF
from deployments.models import Deployment, DeploymentEvent, GpuPool, GpuType, Replica
from deployments.placement import place_replica
from marketplace.models import CatalogModel, ServingProfile
from tests.conftest import owner_of
from tests.deployments.conftest import chat, make_pool, make_region, reconcile_until

GOOD = {"name": "chat", "model_ref": DEMO_MODEL_REF, "gpu_type": "cpu", "regions": ["local"]}
DIGEST = "sha256:" + "ab" * 32


def _nothing_written():
    assert not Deployment.objects.exists()
    assert not DeploymentEvent.objects.exists()
    assert not Replica.objects.exists()


def _build(org, name: str) -> Build:
    """A finished build of ``org`` as the builder leaves it: weights in the cache, an
    image in the registry, a private catalog entry naming the weights."""
    folder = Path(settings.GANTRY_MODEL_DIRS[0]) / "cache" / f"{org.slug}-{name}"
    weights = write_demo_gguf(folder / "model.gguf")
    model = CatalogModel.objects.create(
        slug=name,
        name=name,
        family="other",
        organization=org,
        parameters_b=1,
        context_length=512,
        license="mit",
        num_layers=2,
        hidden_size=64,
        num_heads=4,
        num_kv_heads=2,
        head_dim=16,
    )
    ServingProfile.objects.create(
        model=model,
        name="cpu",
        engine="llama.cpp",
        gpu_type=GpuType.objects.get(code="cpu"),
        quantization="f32",
        max_model_len=512,
        model_ref=str(weights),
        image=f"127.0.0.1:5000/{org.slug}/{name}:abc",
    )
    return Build.objects.create(
        organization=org,
        name=name,
        source_kind=Build.Source.UPLOAD,
        engine="llama.cpp",
        status=BuildStatus.SUCCEEDED,
        image=f"127.0.0.1:5000/{org.slug}/{name}:abc",
        digest=DIGEST,
        catalog_model=model,
    )


def _upload(org) -> Upload:
    folder = Path(settings.MEDIA_ROOT) / "uploads" / str(org.pk) / "u1"
    write_demo_gguf(folder / "mine.gguf")
    return Upload.objects.create(
        organization=org, kind=Upload.Kind.GGUF, name="mine.gguf", path=str(folder)
    )


@pytest.fixture
def media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    return settings.MEDIA_ROOT


@pytest.fixture
def shared(settings, tmp_path):
    """A shared model folder with one model, and a symlink in it pointing out of it."""
    root = tmp_path / "shared"
    write_demo_gguf(root / "team" / "shared.gguf")
    secret = write_demo_gguf(tmp_path / "secret" / "private.gguf")
    os.symlink(secret, root / "escape.gguf")
    settings.GANTRY_SHARED_MODEL_DIRS = [str(root)]
    return root


ENGINE_ATTACKS = [
    ["--hos=0.0.0.0"],
    ["--host", "0.0.0.0"],
    ["--port=1"],
    ["--api_key", "x"],
    ["--api-key=x"],
    ["--trust-remote-code"],
    ["--model", "/etc/passwd"],
    ["--chat_format", "/etc/passwd"],
    ["--chat_format=../../templates/evil.jinja"],
    ["--n_threads=abc"],
    ["--n_threads=-1"],
    ["--n_threads", "9" * 12],
    ["--N_THREADS", "2"],
    ["--no-such-flag", "1"],
    ["--n_threads", "1" * 100_000],
    "--n_ctx 512",
    {"--n_ctx": "512"},
]


@pytest.mark.parametrize("engine_args", ENGINE_ATTACKS)
def test_engine_flag_attacks_fail_on_the_api(engine_args, org_a, local_pool, api_client_for):
    response = api_client_for(org_a).post(
        "/api/v1/deployments", {**GOOD, "engine_args": engine_args}, format="json"
    )
    assert response.status_code == 400, response.content
    assert list(response.json()) == ["engine_args"], response.json()
    assert len(response.content) < 5000  # a huge argument is not echoed back
    _nothing_written()


@pytest.mark.parametrize(
    "image", ["alpine", "busybox:latest", f"alpine@{DIGEST}", "gantry/llamacpp@" + DIGEST]
)
def test_images_that_no_pool_lists_are_refused(image, org_a, local_pool, api_client_for):
    response = api_client_for(org_a).post(
        "/api/v1/deployments", {**GOOD, "image": image}, format="json"
    )
    assert response.status_code == 400, response.content
    message = " ".join(response.json()["image"])
    assert "is not an image these regions run" in message
    assert settings.GANTRY_ENGINE_IMAGES["llama.cpp"] in message  # what is allowed
    _nothing_written()


@pytest.mark.parametrize("image", ["alpine", "busybox:latest", f"alpine@{DIGEST}"])
def test_docker_pools_refuse_unlisted_images_before_anything_is_pulled(
    image, org_a, api_client_for, db
):
    # The refusal comes before any driver call: the pool needs no Docker engine to say no.
    make_pool(
        make_region("docker-local"),
        "cpu-docker",
        "cpu",
        [("dockerhost", 2)],
        driver="docker",
        config={"docker_url": "unix:///nonexistent.sock"},
    )
    response = api_client_for(org_a).post(
        "/api/v1/deployments",
        {**GOOD, "regions": ["docker-local"], "image": image, "engine_args": ["--n_ctx", "256"]},
        format="json",
    )
    assert response.status_code == 400, response.content
    assert "is not an image these regions run" in response.json()["image"][0]
    _nothing_written()


def test_another_organizations_build_image_is_refused_even_by_digest(
    org_a, org_b, local_pool, api_client_for
):
    theirs = _build(org_b, "private-model")
    repo = theirs.image.rpartition(":")[0]
    for image in (theirs.image, f"{repo}@{DIGEST}"):
        response = api_client_for(org_a).post(
            "/api/v1/deployments", {**GOOD, "image": image}, format="json"
        )
        assert response.status_code == 400, response.content
        message = " ".join(response.json()["image"])
        assert "is not an image these regions run" in message and message.count("bravo") == 1
    _nothing_written()
    # The owner may run it, by tag and by digest.
    api = api_client_for(org_b)
    for i, image in enumerate((theirs.image, f"{repo}@{DIGEST}")):
        ok = api.post(
            "/api/v1/deployments", {**GOOD, "name": f"own-{i}", "image": image}, format="json"
        )
        assert ok.status_code == 201, ok.content


def test_pool_allow_lists_decide_which_images_run(org_a, local_pool, api_client_for):
    GpuPool.objects.filter(pk=local_pool.pk).update(
        allowed_images=["registry.example.com/ops/llamacpp:7"], runs_org_builds=False
    )
    api = api_client_for(org_a)
    ok = api.post(
        "/api/v1/deployments",
        {**GOOD, "image": "registry.example.com/ops/llamacpp:7"},
        format="json",
    )
    assert ok.status_code == 201, ok.content
    engine_image = settings.GANTRY_ENGINE_IMAGES["llama.cpp"]
    refused = api.post(
        "/api/v1/deployments", {**GOOD, "name": "b", "image": engine_image}, format="json"
    )
    assert refused.status_code == 400
    assert "registry.example.com/ops/llamacpp:7" in refused.json()["image"][0]
    own = _build(org_a, "mine")
    no_builds = api.post(
        "/api/v1/deployments", {**GOOD, "name": "c", "image": own.image}, format="json"
    )
    assert no_builds.status_code == 400 and "image" in no_builds.json()


def test_placement_skips_pools_whose_allow_list_excludes_the_image(org_a, api_client_for, db):
    near = make_pool(make_region("near"), "cpu", "cpu", [("n1", 2)])
    far = make_pool(make_region("far"), "cpu", "cpu", [("f1", 2)])
    GpuPool.objects.filter(pk=near.pk).update(allowed_images=["ops/other-engine:1"])
    api = api_client_for(org_a)
    created = api.post(
        "/api/v1/deployments", {**GOOD, "regions": ["near", "far"]}, format="json"
    ).json()
    replica = place_replica(deployment=Deployment.objects.get(pk=created["id"]), ordinal=0)
    assert replica.pool_id == far.pk
    only_near = api.post(
        "/api/v1/deployments", {**GOOD, "name": "near-only", "regions": ["near"]}, format="json"
    ).json()
    d = Deployment.objects.get(pk=only_near["id"])
    from deployments.placement import Unschedulable

    with pytest.raises(Unschedulable) as exc:
        place_replica(deployment=d, ordinal=0)
    image = settings.GANTRY_ENGINE_IMAGES["llama.cpp"]
    assert f"near's CPU pools do not run {image}" in exc.value.reason, exc.value.reason
    assert not d.replicas.exists()


@pytest.mark.parametrize(
    "model_ref",
    [
        "../x.gguf",
        "/etc/passwd",
        "/etc/passwd.gguf",
        "missing.gguf",
        "cache/../../etc/passwd",
        "shared:../secret/private.gguf",
        "shared:/etc/passwd",
        "shared:escape.gguf",
        "shared:team/missing.gguf",
        "build:999999",
        "upload:999999",
        "x" * 300,
    ],
)
def test_model_refs_outside_what_the_org_may_use_get_one_answer(
    model_ref, org_a, local_pool, shared, media, api_client_for
):
    response = api_client_for(org_a).post(
        "/api/v1/deployments", {**GOOD, "model_ref": model_ref}, format="json"
    )
    assert response.status_code == 400, response.content
    assert response.json() == {"model_ref": [MODEL_REFUSED]} or (
        len(model_ref) > 255 and "model_ref" in response.json()
    )
    _nothing_written()


@pytest.mark.parametrize(
    "model_ref", ["/etc", "../x", "a/..", "a/.", "./x", "/srv/models/cache/x", "a/b/c", "build:1"]
)
def test_vllm_model_refs_are_hub_repos_or_the_orgs_own(
    model_ref, org_a, local_pool, api_client_for
):
    response = api_client_for(org_a).post(
        "/api/v1/deployments",
        {**GOOD, "engine": "vllm", "model_ref": model_ref},
        format="json",
    )
    assert response.status_code == 400, response.content
    assert response.json() == {"model_ref": [MODEL_REFUSED]}
    _nothing_written()
    hub = api_client_for(org_a).post(
        "/api/v1/deployments",
        {**GOOD, "engine": "vllm", "model_ref": "Qwen/Qwen2.5-7B-Instruct"},
        format="json",
    )
    assert hub.status_code == 201, hub.content


def test_another_organizations_weights_are_refused_like_a_missing_file(
    org_a, org_b, local_pool, media, api_client_for
):
    build, upload = _build(org_b, "secret-model"), _upload(org_b)
    weights = build.catalog_model.profiles.get().model_ref
    upload_file = str(Path(upload.path) / "mine.gguf")
    attacker = api_client_for(org_a)
    for ref in (f"build:{build.pk}", weights, f"upload:{upload.pk}", upload_file):
        response = attacker.post("/api/v1/deployments", {**GOOD, "model_ref": ref}, format="json")
        assert response.status_code == 400, (ref, response.content)
        assert response.json() == {"model_ref": [MODEL_REFUSED]}
    _nothing_written()
    owner = api_client_for(org_b)
    for i, ref in enumerate((f"build:{build.pk}", weights, f"upload:{upload.pk}")):
        ok = owner.post(
            "/api/v1/deployments", {**GOOD, "name": f"m{i}", "model_ref": ref}, format="json"
        )
        assert ok.status_code == 201, ok.content
    stored = set(Deployment.objects.values_list("model_ref", flat=True))
    assert stored == {str(Path(weights).resolve()), str(Path(upload_file).resolve())}


def test_shared_folders_serve_every_org_by_relative_path(org_a, local_pool, shared, api_client_for):
    response = api_client_for(org_a).post(
        "/api/v1/deployments", {**GOOD, "model_ref": "shared:team/shared.gguf"}, format="json"
    )
    assert response.status_code == 201, response.content
    assert Deployment.objects.get().model_ref == str((shared / "team" / "shared.gguf").resolve())


def _form(**change) -> dict:
    return {
        "name": "web",
        "engine": "llama.cpp",
        "model_ref": DEMO_MODEL_REF,
        "image": "",
        "engine_args": "",
        "gpu_type": "cpu",
        "gpus_per_replica": 1,
        "min_replicas": 1,
        "max_replicas": 1,
        "region_1": "local",
        **change,
    }


@pytest.mark.parametrize(
    ("change", "shown"),
    [
        ({"engine_args": "--hos=0.0.0.0"}, "engine_args: &#x27;--hos&#x27; is not a flag"),
        ({"engine_args": "--api-key=x"}, "engine_args: &#x27;--api-key&#x27; is set by Gantry"),
        ({"engine_args": "--n_threads -1"}, "engine_args: &#x27;-1&#x27; is not allowed"),
        ({"engine_args": "--n_threads " + "1" * 100_000}, "engine_args: Ensure this value"),
        ({"image": "busybox:latest"}, "image: &#x27;busybox:latest&#x27; is not an image"),
        ({"model_ref": "/etc/passwd"}, "model_ref: Not a model this organization may use"),
        ({"model_ref": "../x.gguf"}, "model_ref: Not a model this organization may use"),
    ],
)
def test_the_browser_form_refuses_the_same_attacks_next_to_the_field(
    change, shown, org_a, local_pool, web_client
):
    client = web_client(owner_of(org_a), org_a)
    response = client.post(reverse("deployments:create"), _form(**change))
    assert response.status_code == 200
    assert shown in response.content.decode()
    _nothing_written()


def test_the_form_lists_the_flags_each_engine_allows(org_a, local_pool, web_client):
    page = web_client(owner_of(org_a), org_a).get(reverse("deployments:create")).content.decode()
    assert "<code>--n_threads</code>" in page and "<code>--max-num-seqs</code>" in page
    assert "<code>--host</code>" not in page


def test_the_api_publishes_the_flag_schema(org_a, api_client_for):
    engines = api_client_for(org_a).get("/api/v1/engines").json()
    by_engine = {e["engine"]: e["versions"] for e in engines}
    assert set(by_engine) == {"llama.cpp", "vllm", "sglang"}
    names = {f["name"] for f in by_engine["vllm"][0]["flags"]}
    assert "--max-num-seqs" in names and "--trust-remote-code" not in names


@pytest.mark.django_db(transaction=True)
def test_allowed_flags_start_a_real_llamacpp_replica_that_answers(
    org_a, local_pool, api_client_for
):
    args = ["--n_ctx=256", "--n-threads", "2", "--flash_attn", "false", "--seed=7"]
    response = api_client_for(org_a).post(
        "/api/v1/deployments", {**GOOD, "engine_args": args}, format="json"
    )
    assert response.status_code == 201, response.content
    d = Deployment.objects.get(pk=response.json()["id"])
    assert d.engine_args == [
        "--n_ctx",
        "256",
        "--n_threads",
        "2",
        "--flash_attn",
        "false",
        "--seed",
        "7",
    ]
    reconcile_until(d, lambda d: d.status == "running", what="running")
    replica = d.replicas.get(status="running")
    assert chat(replica.url)["choices"][0]["message"]["role"] == "assistant"
