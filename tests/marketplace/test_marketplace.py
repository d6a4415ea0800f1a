import pytest
from django.urls import reverse

from deployments.models import Deployment, Node
from marketplace.launch import profile_launch
from marketplace.models import CatalogModel, ServingProfile
from tests.conftest import owner_of
from tests.deployments.conftest import make_pool, make_region


@pytest.fixture
def h100_region(db):
    region = make_region("eu-west", "EU West")
    return make_pool(region, "h100-a", "h100-80gb", [("n1", 8)], driver="kubernetes")


def test_grid_searches_filters_and_shows_the_cheapest_price(catalog, org_a, web_client):
    client = web_client(owner_of(org_a), org_a)
    page = client.get(reverse("marketplace:grid"), {"search": "qwen"}).content.decode()
    assert "Qwen3 8B" in page and "Llama 3.1 8B" not in page
    # Search as you type: the htmx request gets only the results fragment.
    fragment = client.get(
        reverse("marketplace:grid"),
        {"search": "coder"},
        HTTP_HX_REQUEST="true",
        HTTP_HX_TARGET="results",
    ).content.decode()
    assert fragment.lstrip().startswith('<div id="results">') and "Coder 32B" in fragment
    fits_l40s = client.get(reverse("marketplace:grid"), {"gpu_type": "l40s-48gb"}).content
    assert b"Qwen2.5 7B Instruct" in fits_l40s and b"DeepSeek R1<" not in fits_l40s
    cheap = client.get(reverse("marketplace:grid"), {"search": "qwen2.5-7b"}).content.decode()
    assert "from <strong>$0.05/h</strong>" in cheap  # the CPU profile: 1 slot × $0.05


def test_model_page_compares_profiles_with_fit_and_price(catalog, org_a, web_client):
    client = web_client(owner_of(org_a), org_a)
    page = client.get(reverse("marketplace:model", args=["deepseek-r1"])).content.decode()
    assert "multi-head latent" in page.lower() and "37B active" in page
    # Per GPU: 8×H100 FP8 needs 88.7 GiB on each GPU, vLLM may use 0.9 × 79.15.
    assert "does not fit" in page and "88.7 of 71.2 GiB per GPU" in page
    assert "not offered" in page and "Does not fit: needs 88.7 GiB per GPU" in page
    assert "$31.92/h" in page  # 8 × H200 at $3.99
    assert "operator&#x27;s own price, from 2020-01-01" in page
    assert "no cited or measured figure" in page
    # Each profile's exact command and the engine version it is written for.
    assert (
        "python3 -m sglang.launch_server --model-path deepseek-ai/DeepSeek-R1 --host "
        "&lt;replica address&gt; --port 8000 --tp-size 8 --ep-size 8 --context-length 65536"
    ) in page
    assert "--api-key &lt;elided&gt;" in page and "SGLang 0.5.3" in page


def test_api_lists_and_details_models_per_the_contract(catalog, org_a, api_client_for):
    api = api_client_for(org_a)
    body = api.get("/api/v1/models", {"family": "qwen", "gpu_type": "h100-80gb"}).json()
    assert body["count"] >= 5
    row = body["results"][0]
    assert {
        "slug",
        "name",
        "family",
        "hf_repo",
        "parameters_b",
        "context_length",
        "license",
    } <= row.keys()
    assert all(r["family"] == "qwen" for r in body["results"])
    detail = api.get("/api/v1/models/qwen3-8b").json()
    profile = detail["profiles"][0]
    assert {
        "id",
        "engine",
        "gpu_type",
        "gpu_count",
        "quantization",
        "max_model_len",
        "price_per_hour",
        "fits",
    } <= profile.keys()
    assert api.get("/api/v1/models/no-such-model").status_code == 404
    r1 = {p["name"]: p for p in api.get("/api/v1/models/deepseek-r1").json()["profiles"]}
    h200 = r1["h200x8-fp8"]
    assert h200["engine_version"] == "0.5.3" and h200["launch_error"] == ""
    assert h200["launch"][:5] == [
        "python3",
        "-m",
        "sglang.launch_server",
        "--model-path",
        "deepseek-ai/DeepSeek-R1",
    ]
    assert h200["launch"][-2:] == ["--api-key", "<elided>"]
    assert h200["launch_engine_args"][:4] == ["--tp-size", "8", "--ep-size", "8"]
    assert h200["fits"] and h200["fit_reason"].startswith("Fits: needs 114.4 GiB per GPU")
    assert h200["price_source"] == "operator's own price, from 2020-01-01"
    h100 = r1["h100x8-fp8"]
    assert not h100["fits"] and h100["fit_reason"].startswith("Does not fit: needs 88.7 GiB")


@pytest.mark.parametrize("count", [1, 1000])
def test_list_page_and_api_keep_a_constant_query_count(
    count, org_a, web_client, api_client_for, django_assert_max_num_queries, db
):
    from deployments.gpu_types import ensure_gpu_types
    from deployments.models import GpuType

    ensure_gpu_types()
    h100 = GpuType.objects.get(code="h100-80gb")
    models = CatalogModel.objects.bulk_create(
        CatalogModel(
            slug=f"m{i}",
            name=f"Model {i}",
            family="qwen",
            parameters_b=7,
            context_length=32768,
            license="apache-2.0",
            num_layers=28,
            hidden_size=3584,
            num_heads=28,
            num_kv_heads=4,
            head_dim=128,
        )
        for i in range(count)
    )
    ServingProfile.objects.bulk_create(
        ServingProfile(
            model=m,
            name="h100",
            engine="vllm",
            gpu_type=h100,
            quantization="bf16",
            max_model_len=32768,
            fits=True,
        )
        for m in models
    )
    client = web_client(owner_of(org_a), org_a)
    with django_assert_max_num_queries(10):
        assert client.get(reverse("marketplace:grid")).status_code == 200
    api = api_client_for(org_a)
    with django_assert_max_num_queries(6):
        assert api.get("/api/v1/models").json()["count"] == count


def test_deploy_through_the_api_with_model_and_profile(catalog, org_a, api_client_for, h100_region):
    api = api_client_for(org_a)
    response = api.post(
        "/api/v1/deployments", {"model": "qwen3-8b", "profile": "h100-bf16"}, format="json"
    )
    assert response.status_code == 201, response.content
    d = Deployment.objects.get(pk=response.json()["id"])
    assert (d.engine, d.model_ref, d.gpu_type.code, d.gpus_per_replica) == (
        "sglang",
        "hub:Qwen/Qwen3-8B@main",  # the snapshot, fetched into eu-west's weights cache
        "h100-80gb",
        1,
    )
    assert (d.weights.repo, d.weights.filename, d.weights.region.code) == (
        "Qwen/Qwen3-8B",
        "",
        "eu-west",
    )
    assert d.regions == ["eu-west"]  # the region with room, chosen for the caller
    # Exactly the profile's rendered launch.
    launch = profile_launch(ServingProfile.objects.get(model__slug="qwen3-8b", name="h100-bf16"))
    assert (
        d.engine_args
        == launch.engine_args
        == [
            *["--tp-size", "1", "--context-length", "40960", "--max-running-requests", "8"],
            *["--mem-fraction-static", "0.9", "--enable-metrics"],
        ]
    )
    assert d.source == "catalog:qwen3-8b/h100-bf16" and d.name == "qwen3-8b"


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ({"model": "gpt-5"}, "model", "No model 'gpt-5' in the catalog."),
        ({"model": "qwen3-8b", "profile": "tpu"}, "profile", "has no profile 'tpu'"),
        ({"model": "deepseek-r1", "profile": "h100x8-fp8"}, "profile", "h100x8-fp8: Does not fit"),
        (
            {"model": "qwen3-8b", "profile": "l40s-bf16", "regions": ["eu-west"]},
            "regions",
            "eu-west has no L40S 48GB pool",
        ),
        (
            {"model": "llama-3.1-405b-instruct", "profile": "h100x8-fp8", "regions": ["eu-west"]},
            "regions",
            "No room: needs 8×H100 80GB on one node; eu-west has 2 free",
        ),
    ],
)
def test_bad_catalog_deploys_name_the_problem_and_create_nothing(
    body, field, words, catalog, org_a, api_client_for, h100_region
):
    Node.objects.filter(pool=h100_region).update(gpus_allocated=6)
    response = api_client_for(org_a).post("/api/v1/deployments", body, format="json")
    assert response.status_code == 400, response.content
    assert words in " ".join(response.json()[field])
    assert not Deployment.objects.exists()


def test_deploy_page_preselects_profile_and_region_and_creates_in_one_click(
    catalog, org_a, web_client, local_pool
):
    client = web_client(owner_of(org_a), org_a)
    url = reverse("marketplace:deploy", args=["gantry-tiny-random-llama"])
    page = client.get(url).content.decode()
    assert 'value="cpu-f32" selected' in page and 'value="local" selected' in page
    assert "Fits: needs 0.3 GiB" in page and "$0.05/h" in page
    assert "random weights" in page.lower()
    response = client.post(url, {"profile": "cpu-f32", "region": "local", "name": ""})
    d = Deployment.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/deployments/{d.pk}/"
    assert d.model_ref == "demo:tiny-random-llama" and d.engine_args == [
        "--n_ctx",
        "512",
        "--cache",
        "true",
    ]


def test_llama_cpp_profile_fetches_its_gguf_file_from_its_weights_repo(
    catalog, org_a, api_client_for, local_pool
):
    response = api_client_for(org_a).post(
        "/api/v1/deployments", {"model": "qwen3-8b", "profile": "cpu-q4"}, format="json"
    )
    assert response.status_code == 201, response.content
    d = Deployment.objects.get()
    assert d.model_ref == "hub:Qwen/Qwen3-8B-GGUF@main/Qwen3-8B-Q4_K_M.gguf"
    assert (d.weights.repo, d.weights.filename, d.weights.status) == (
        "Qwen/Qwen3-8B-GGUF",
        "Qwen3-8B-Q4_K_M.gguf",
        "pending",
    )
    assert response.json()["weights"]["progress"].startswith("fetching weights")


def test_where_the_pool_says_so_the_engine_downloads_the_weights_with_the_hub_token(
    catalog, org_a, api_client_for, h100_region, settings
):
    from deployments.drivers.launch import engine_launch
    from deployments.models import Replica
    from deployments.services.reconcile import _spec
    from deployments.services.weights import hub_token_for
    from portal.services import organization_hub_token_set

    h100_region.engine_fetches_weights = True
    h100_region.save()
    settings.HF_TOKEN = "hf_operatortoken"
    response = api_client_for(org_a).post(
        "/api/v1/deployments", {"model": "qwen3-8b", "profile": "h100-bf16"}, format="json"
    )
    assert response.status_code == 201, response.content
    d = Deployment.objects.get()
    assert d.model_ref == "Qwen/Qwen3-8B" and d.weights is None
    replica = Replica(pk=99, deployment=d, region=h100_region.region, gpus=1, ordinal=0)
    replica.node = h100_region.nodes.get()
    spec = _spec(d, replica)
    assert "hf_operatortoken" not in repr(spec)  # never in a log line
    launch = engine_launch(spec, model_path=d.model_ref, host="10.0.0.5", port=1)
    assert launch.env["HF_TOKEN"] == "hf_operatortoken"
    assert not any("hf_operatortoken" in a for a in launch.argv)
    # The organization's own token wins over the operator's.
    organization_hub_token_set(organization=org_a, token="hf_orgtoken123")
    assert hub_token_for(org_a) == "hf_orgtoken123"
    org_a.refresh_from_db()
    assert "hf_orgtoken123" not in org_a.hub_token_encrypted
