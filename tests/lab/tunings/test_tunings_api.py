"""Tunings through the API and the pages: create, bad inputs (nothing queued), other
organizations, deploy/publish rules, the leaderboard and its bundles."""

import json

import pytest
from django.contrib.auth.models import Permission
from django.urls import reverse

from lab.models import LeaderboardEntry, Tuning
from marketplace.models import CatalogModel, ServingProfile
from tests.conftest import owner_of
from tests.lab.tunings.conftest import DEMO_SLUG, finished_tuning, tuning_body

pytestmark = pytest.mark.django_db


def test_create_answers_201_and_queues_one_run(
    catalog, local_pool, org_a, api_client_for, django_capture_on_commit_callbacks
):
    api = api_client_for(org_a)
    with django_capture_on_commit_callbacks(execute=False) as queued:
        r = api.post("/api/v1/tunings", tuning_body(), format="json")
    assert r.status_code == 201, r.content
    body = r.json()
    assert body["status"] == "queued" and body["model"] == DEMO_SLUG
    assert body["trials"] == [] and body["best"] is None and body["pareto"] == []
    assert body["space"] == {"n_threads": [1, 2], "n_batch": [64, 256], "flash_attn": [False]}
    assert len(queued) == 1
    t = Tuning.objects.get(pk=body["id"])
    # The profile's own flags stay; the searched ones are left to each trial.
    # The profile's rendered launch (its prompt cache on), minus the flags searched.
    assert t.base_args == ["--n_ctx", "512", "--cache", "true"] and t.regions == {"cpu": ["local"]}
    assert api.get(f"/api/v1/tunings/{t.pk}").json()["id"] == t.pk


BAD = [
    ({"budget": {"trials": 0}}, "budget.trials"),
    ({"budget": {"trials": True}}, "budget.trials"),
    ({"budget": {"trials": "5"}}, "budget.trials"),
    ({"budget": {"gpu_hours": 0}}, "budget.gpu_hours"),
    ({"budget": {"gpu_hours": -1.5}}, "budget.gpu_hours"),
    ({"budget": {"trials": 3, "gpu_hours": 1}}, "budget"),
    ({"budget": {"minutes": 3}}, "budget"),
    ({"budget": 12}, "budget"),
    ({"budget": {"trials": 10**9}}, "budget.trials"),
    ({"gpu_types": ["h100"]}, "gpu_types"),  # an abbreviation is not a GPU type
    ({"gpu_types": ["h100-80gb"]}, "gpu_types"),  # no pool has it
    ({"gpu_types": []}, "gpu_types"),
    ({"gpu_types": "cpu"}, "gpu_types"),
    ({"gpu_types": ["cpu", "cpu"]}, "gpu_types"),
    ({"objective": "max_throughput"}, "objective"),
    ({"slo": {"ttft_p95_ms": "500ms"}}, "slo.ttft_p95_ms"),
    ({"slo": {"ttft_p95_s": 0.5}}, "slo.ttft_p95_s"),
    ({"slo": {"ttft_p95_ms": -1}}, "slo.ttft_p95_ms"),
    ({"slo": {"error_rate": 5}}, "slo.error_rate"),
    ({"slo": {}}, "slo"),  # an objective under an SLO needs a latency bound
    ({"workload": {"input_tokens": 600}}, "workload"),  # does not fit 512 tokens
    ({"workload": {"input_tokens": "many"}}, "workload.input_tokens"),
    ({"load": {"kind": "rate", "rates": [1]}}, "load.kind"),
    ({"load": {"concurrency": [0]}}, "load.concurrency[0]"),
    ({"space": {"--host": ["0.0.0.0"]}}, "space"),
    ({"space": {"--n_threads": [10**6]}}, "space"),
    ({"model": None}, "model"),
    ({"build": 1}, "model"),  # both model and build
]


@pytest.mark.parametrize(("change", "field"), BAD, ids=[f for _c, f in BAD])
def test_bad_input_is_a_400_naming_the_field_and_nothing_is_queued(
    change, field, catalog, local_pool, org_a, api_client_for, django_capture_on_commit_callbacks
):
    api = api_client_for(org_a)
    with django_capture_on_commit_callbacks(execute=False) as queued:
        r = api.post("/api/v1/tunings", tuning_body(**change), format="json")
    assert r.status_code == 400, (change, r.content)
    assert field in r.json(), (field, r.json())
    assert queued == [] and not Tuning.objects.exists()


def test_other_organizations_model_and_build_are_404_and_nothing_is_queued(
    catalog, local_pool, org_a, org_b, api_client_for, django_capture_on_commit_callbacks
):
    from builder.models import Build

    private = CatalogModel.objects.create(
        organization=org_b,
        slug="b-private",
        name="B's",
        family="other",
        parameters_b=1,
        context_length=4096,
        license="x",
        num_layers=1,
        hidden_size=1,
        num_heads=1,
        num_kv_heads=1,
        head_dim=1,
    )
    build = Build.objects.create(
        organization=org_b, name="b-build", source_kind="huggingface", catalog_model=private
    )
    api = api_client_for(org_a)
    with django_capture_on_commit_callbacks(execute=False) as queued:
        r1 = api.post("/api/v1/tunings", tuning_body(model="b-private"), format="json")
        r2 = api.post("/api/v1/tunings", tuning_body(model=None, build=build.pk), format="json")
        r3 = api.post("/api/v1/tunings", tuning_body(model=None, build="1 OR 1=1"), format="json")
    assert r1.status_code == 404 and r2.status_code == 404 and r3.status_code == 400
    assert queued == [] and not Tuning.objects.exists()


def test_detail_shows_trials_best_pareto_and_why(catalog, org_a, api_client_for):
    t = finished_tuning(org_a, owner_of(org_a))
    body = api_client_for(org_a).get(f"/api/v1/tunings/{t.pk}").json()
    assert [x["number"] for x in body["trials"]] == [1, 2]
    assert body["best"]["number"] == 2 and body["best"]["value"] == 20.0
    assert body["pareto"] and all(p["trial"] == 2 for p in body["pareto"])
    assert "Trial 2 is best" in body["why_best"] and "trial 1" in body["why_best"]


def test_deploy_the_winner_creates_a_deployment_with_its_flags(
    catalog, local_pool, org_a, api_client_for, django_capture_on_commit_callbacks
):
    t = finished_tuning(org_a, owner_of(org_a))
    with django_capture_on_commit_callbacks(execute=False):
        r = api_client_for(org_a).post(f"/api/v1/tunings/{t.pk}/deploy", {}, format="json")
    assert r.status_code == 201, r.content
    assert r.json()["engine_args"] == ["--n_ctx", "512", "--n_threads", "2"]
    t.refresh_from_db()
    assert t.deployed_id == r.json()["id"]


def test_only_staff_or_catalog_maintainers_publish_and_the_model_page_shows_provenance(
    catalog, org_a, api_client_for, web_client
):
    owner = owner_of(org_a)
    t = finished_tuning(org_a, owner)
    api = api_client_for(org_a, owner)
    denied = api.post(f"/api/v1/tunings/{t.pk}/publish", {}, format="json")
    assert (
        denied.status_code == 403
        and not ServingProfile.objects.filter(name__startswith="tuned-").exists()
    )
    owner.user_permissions.add(Permission.objects.get(codename="change_servingprofile"))
    r = api_client_for(org_a, type(owner).objects.get(pk=owner.pk)).post(
        f"/api/v1/tunings/{t.pk}/publish", {}, format="json"
    )
    assert r.status_code == 200, r.content
    body = r.json()
    assert body["profile"] == "tuned-cpu-llamacpp" and body["launch"][-1] == "2"
    assert body["measured"]["tuning"] == t.pk and body["measured"]["figures"]["output_tokens_per_s"]
    page = web_client(owner, org_a).get(reverse("marketplace:model", args=[DEMO_SLUG]))
    html = page.content.decode()
    assert "tuned-cpu-llamacpp" in html and "measured" in html
    assert f"tuning #{t.pk}" in html and "within ±15%" in html
    detail = api.get(f"/api/v1/models/{DEMO_SLUG}").json()
    assert any(p.get("name") == "tuned-cpu-llamacpp" for p in detail["profiles"])
    # Published results are shared with every organization's leaderboard.
    assert LeaderboardEntry.objects.get(tuning=t).organization_id is None


def test_cancel_of_a_queued_tuning_is_immediate(catalog, local_pool, org_a, api_client_for):
    api = api_client_for(org_a)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("lab.tasks.run_tuning.delay", lambda *_a: None)
        pk = api.post("/api/v1/tunings", tuning_body(), format="json").json()["id"]
    r = api.post(f"/api/v1/tunings/{pk}/cancel", {}, format="json")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"


def test_leaderboard_filters_and_round_trips_a_bundle(catalog, org_a, org_b, api_client_for):
    finished_tuning(org_a, owner_of(org_a))
    api_a, api_b = api_client_for(org_a), api_client_for(org_b)
    rows = api_a.get("/api/v1/leaderboard", {"gpu_type": "cpu"}).json()
    assert len(rows) == 1 and rows[0]["best_throughput"]["output_tokens_per_s"] == 20.0
    assert api_a.get("/api/v1/leaderboard", {"engine": "vllm"}).json() == []
    assert api_b.get("/api/v1/leaderboard").json() == []  # org A's own results stay its own
    bundle = api_a.get("/api/v1/leaderboard/export").json()
    assert bundle["format"] == "gantry-lab-results" and bundle["version"] == 1
    r = api_b.post("/api/v1/leaderboard/import", bundle, format="json")
    assert r.status_code == 201 and len(r.json()) == 1
    again = api_b.post("/api/v1/leaderboard/import", bundle, format="json")
    assert again.status_code == 201 and again.json() == []  # no duplicates
    assert api_b.get("/api/v1/leaderboard").json()[0]["best_throughput"]["source"] == "import"


def _bundle(**result_over):
    result = {
        "model": "m",
        "family": "llama",
        "engine": "llama.cpp",
        "engine_version": "0.3.36",
        "gpu_type": "cpu",
        "gpu_count": 1,
        "objective": "max_throughput_under_slo",
        "launch": ["--n_threads", "2"],
        "output_tokens_per_s": 10.0,
        "slo": {"ttft_p95_ms": 500},
        "workload": {},
        "provenance": {},
        "measured_at": "2026-12-06T03:00:00Z",
    }
    result.update(result_over)
    return {"format": "gantry-lab-results", "version": 1, "results": [result]}


ATTACKS = [
    (lambda: {**_bundle(), "version": 2}, "version"),
    (lambda: {**_bundle(), "version": True}, "version"),
    (lambda: {**_bundle(), "format": "other"}, "format"),
    (lambda: {**_bundle(), "results": {"a": 1}}, "results"),
    (lambda: {**_bundle(), "results": [1] * 501}, "at most 500"),
    (lambda: _bundle(launch=["--host", "0.0.0.0"]), "launch"),
    (lambda: _bundle(launch=["--n_thr", "2"]), "launch"),
    (lambda: _bundle(output_tokens_per_s="fast"), "output_tokens_per_s"),
    (lambda: _bundle(output_tokens_per_s=-1), "output_tokens_per_s"),
    (lambda: _bundle(output_tokens_per_s=1e308), "output_tokens_per_s"),
    (lambda: _bundle(gpu_count=True), "gpu_count"),
    (lambda: _bundle(engine="tgi"), "engine"),
    (lambda: _bundle(engine_version="9.9"), "engine_version"),
    (lambda: _bundle(model="<script>"), "model"),
    (lambda: _bundle(slo={"ttft_p95_s": 1}), "slo"),
    (lambda: _bundle(workload={"x": "y" * 5000}), "workload"),
    (lambda: _bundle(measured_at="yesterday"), "measured_at"),
    (lambda: _bundle(measured_at="2026-12-06T03:00:00"), "time zone"),
]


@pytest.mark.parametrize(("make", "names"), ATTACKS, ids=[n for _m, n in ATTACKS])
def test_bad_bundles_are_refused_whole_naming_the_field(make, names, org_a, api_client_for):
    good = _bundle()["results"][0]
    doc = make()
    if isinstance(doc.get("results"), list) and doc["results"] and doc["results"][0] != 1:
        doc["results"] = [good, *doc["results"]]  # a good row first: nothing half-written
    r = api_client_for(org_a).post("/api/v1/leaderboard/import", doc, format="json")
    assert r.status_code == 400, r.content
    assert names in json.dumps(r.json()), r.json()
    assert not LeaderboardEntry.objects.exists()


def test_bundle_that_is_not_json_or_too_big_is_refused(org_a, api_client_for):
    api = api_client_for(org_a)
    huge = b'{"format": "' + b"a" * (2 << 20) + b'"}'
    for raw in (b"", b"{not json", b"[" * 100_000 + b"]" * 100_000, huge, b"[]"):
        r = api.post("/api/v1/leaderboard/import", raw, content_type="application/json")
        assert r.status_code == 400, raw[:20]
    assert not LeaderboardEntry.objects.exists()


def test_pages_list_form_errors_detail_chart_and_leaderboard(
    catalog, local_pool, org_a, web_client
):
    client = web_client(owner_of(org_a), org_a)
    t = finished_tuning(org_a, owner_of(org_a))
    page = client.get(reverse("lab:tunings")).content.decode()
    assert f'href="/lab/tunings/{t.pk}/"' in page and "Start tuning" in page
    bad = client.post(
        reverse("lab:tunings"),
        {
            "model": DEMO_SLUG,
            "gpu_types": ["cpu"],
            "objective": "max_throughput_under_slo",
            "ttft_p95_ms": "5000",
            "budget_kind": "trials",
            "budget_value": "0",
        },
    )
    assert bad.status_code == 400 and "budget.trials" in bad.content.decode()
    assert Tuning.objects.count() == 1
    detail = client.get(reverse("lab:tuning", args=[t.pk])).content.decode()
    assert 'data-testid="pareto-chart"' in detail and "<circle" in detail
    assert "Trial 2 is best" in detail and "Deploy the winner" in detail
    assert "Publish as tuned profile" not in detail  # not staff
    board = client.get(reverse("lab:leaderboard"), {"model": DEMO_SLUG}).content.decode()
    assert "20.0 tok/s" in board
    empty = client.get(reverse("lab:leaderboard"), {"model": "nothing"}).content.decode()
    assert "No results yet" in empty


def test_tuning_list_api_query_count_is_flat(
    catalog, org_a, api_client_for, django_assert_max_num_queries
):
    for _ in range(3):
        finished_tuning(org_a, owner_of(org_a))
    api = api_client_for(org_a)
    with django_assert_max_num_queries(12):
        r = api.get("/api/v1/tunings")
    assert r.json()["count"] == 3


def test_a_new_tuning_of_the_same_family_is_warm_started_with_earlier_winners(
    catalog, local_pool, org_a, org_b, api_client_for, django_capture_on_commit_callbacks
):
    finished_tuning(org_a, owner_of(org_a))  # best: n_threads=2
    finished_tuning(org_b, owner_of(org_b), values=(50.0,))  # another organization's
    with django_capture_on_commit_callbacks(execute=False):
        r = api_client_for(org_a).post("/api/v1/tunings", tuning_body(), format="json")
    assert Tuning.objects.get(pk=r.json()["id"]).warm_start == [{"n_threads": 2}]
