import pytest
from django.urls import reverse

from deployments.engines import DEMO_MODEL_REF
from deployments.models import Deployment, DeploymentEvent, Node
from portal.models import Role
from tests.conftest import owner_of
from tests.deployments.conftest import make_pool, make_region

GOOD = {"name": "chat", "model_ref": DEMO_MODEL_REF, "gpu_type": "cpu", "regions": ["local"]}


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"gpu_type": "tpu-v9"}, "gpu_type", "Unknown GPU type 'tpu-v9'; choose one of:"),
        ({"gpus_per_replica": 9}, "gpus_per_replica", "more than any node has (the largest has 4)"),
        ({"min_replicas": 3, "max_replicas": 2}, "min_replicas", "must not exceed max_replicas"),
        ({"regions": ["mars"]}, "regions", "Unknown region 'mars'; choose from: local"),
        ({"regions": []}, "regions", ""),
        ({"name": "Bad Name!"}, "name", "lowercase letters"),
        ({"engine": "magic"}, "engine", "Choose one of"),
        ({"engine_args": ["--n_ctx", "1; rm -rf /"]}, "engine_args", "is not allowed"),
        ({"engine_args": ["--port", "80"]}, "engine_args", "is set by Gantry"),
        ({"model_ref": "/etc/passwd"}, "model_ref", "Not a model this organization may use"),
        ({"model_ref": "/tmp/elsewhere.gguf"}, "model_ref", "Not a model this organization"),
        ({"image": "Not An Image"}, "image", "image reference"),
        ({"gpus_per_replica": "two"}, "gpus_per_replica", "integer"),
    ],
)
def test_bad_input_names_the_field_and_creates_nothing(
    change, field, words, org_a, local_pool, api_client_for
):
    api = api_client_for(org_a)
    response = api.post("/api/v1/deployments", {**GOOD, **change}, format="json")
    assert response.status_code == 400, response.content
    body = response.json()
    assert field in body, body
    assert words in " ".join(body[field])
    assert not Deployment.objects.exists() and not DeploymentEvent.objects.exists()


def test_duplicate_name_in_org_is_refused_but_another_org_may_reuse_it(
    org_a, org_b, local_pool, api_client_for
):
    assert api_client_for(org_a).post("/api/v1/deployments", GOOD, format="json").status_code == 201
    again = api_client_for(org_a).post("/api/v1/deployments", GOOD, format="json")
    assert again.status_code == 400 and "already has a deployment" in again.json()["name"][0]
    assert api_client_for(org_b).post("/api/v1/deployments", GOOD, format="json").status_code == 201


def test_create_answers_201_with_the_contract_fields(org_a, local_pool, api_client_for):
    response = api_client_for(org_a).post(
        "/api/v1/deployments", {**GOOD, "min_replicas": 1, "max_replicas": 3}, format="json"
    )
    assert response.status_code == 201
    body = response.json()
    assert {"id", "name", "status", "endpoint", "replicas", "created_at"} <= body.keys()
    assert body["status"] == "pending" and body["replicas"] == [] and body["endpoint"] is None
    events = api_client_for(org_a).get(f"/api/v1/deployments/{body['id']}/events").json()
    assert events["results"][0]["kind"] == "created"
    assert {"at", "kind", "message"} <= events["results"][0].keys()


def test_scale_outside_the_range_is_refused(org_a, local_pool, api_client_for):
    api = api_client_for(org_a)
    d = api.post("/api/v1/deployments", {**GOOD, "max_replicas": 2}, format="json").json()
    response = api.post(f"/api/v1/deployments/{d['id']}/scale", {"replicas": 5}, format="json")
    assert response.status_code == 400
    assert response.json()["replicas"] == ["Choose 0 (stop) or from 1 to 2; got 5."]
    assert Deployment.objects.get(pk=d["id"]).desired_replicas == 1


def test_billing_role_cannot_deploy(org_a, local_pool, make_user, add_member, api_client_for):
    m = add_member(org_a, make_user("accountant"), Role.BILLING)
    response = api_client_for(org_a, m.user).post("/api/v1/deployments", GOOD, format="json")
    assert response.status_code == 403 and not Deployment.objects.exists()


def test_regions_list_pools_with_free_gpus(org_a, api_client_for, db):
    region = make_region("eu-west", "EU West")
    pool = make_pool(region, "h100-a", "h100-80gb", [("n1", 8), ("n2", 8)], driver="docker")
    Node.objects.filter(pool=pool, name="n1").update(gpus_allocated=3)
    body = api_client_for(org_a).get("/api/v1/regions").json()
    assert body == [
        {
            "code": "eu-west",
            "name": "EU West",
            "location": "",
            "latitude": 0.0,
            "longitude": 0.0,
            "pools": [
                {
                    "name": "h100-a",
                    "driver": "docker",
                    "gpu_type": "h100-80gb",
                    "gpus_total": 16,
                    "gpus_free": 13,
                    "healthy": True,
                }
            ],
        }
    ]


def test_list_api_and_page_keep_a_constant_query_count(
    org_a, local_pool, api_client_for, web_client, django_assert_max_num_queries
):
    api = api_client_for(org_a)
    for i in range(25):
        api.post("/api/v1/deployments", {**GOOD, "name": f"d{i}"}, format="json")
    with django_assert_max_num_queries(8):
        assert api.get("/api/v1/deployments").json()["count"] == 25
    client = web_client(owner_of(org_a), org_a)
    with django_assert_max_num_queries(12):
        assert client.get(reverse("deployments:list")).status_code == 200


def test_form_errors_show_next_to_the_fields(org_a, local_pool, web_client):
    client = web_client(owner_of(org_a), org_a)
    response = client.post(
        reverse("deployments:create"),
        {
            "name": "x",
            "engine": "llama.cpp",
            "model_ref": DEMO_MODEL_REF,
            "gpu_type": "cpu",
            "gpus_per_replica": 9,
            "min_replicas": 1,
            "max_replicas": 1,
            "region_1": "local",
        },
    )
    body = response.content.decode()
    assert response.status_code == 200
    assert "gpus_per_replica: 9×CPU is more than any node has (the largest has 4)." in body
    assert not Deployment.objects.exists()


def test_capacity_page_is_for_staff(org_a, local_pool, web_client, make_user):
    client = web_client(owner_of(org_a), org_a)
    assert client.get(reverse("deployments:capacity")).status_code == 302  # to the admin login
    staff = make_user("ops", is_staff=True)
    client.force_login(staff)
    page = client.get(reverse("deployments:capacity")).content.decode()
    assert "This machine" in page and "4 in all, 0 allocated, 4 free" in page


def test_autoscaling_settings_are_taken_and_checked(org_a, local_pool, api_client_for):
    api = api_client_for(org_a)
    ok = api.post(
        "/api/v1/deployments",
        {**GOOD, "max_replicas": 3, "autoscale_target": 4, "scale_to_zero_after_s": 600},
        format="json",
    )
    assert ok.status_code == 201
    assert (ok.json()["autoscale_target"], ok.json()["scale_to_zero_after_s"]) == (4, 600)
    bad = api.post(
        "/api/v1/deployments", {**GOOD, "name": "b", "scale_to_zero_after_s": 5}, format="json"
    )
    assert bad.status_code == 400
    assert bad.json()["scale_to_zero_after_s"] == ["Must be from 60 to 2592000; got 5."]
