import pytest

from marketplace.models import CatalogModel, CatalogSync
from marketplace.services import catalog_sync
from tests.marketplace.hub_server import HubServer


@pytest.fixture
def hub(settings):
    with HubServer() as server:
        settings.HF_ENDPOINT = server.url
        yield server


def test_sync_refreshes_facts_through_the_real_client(catalog, hub):
    hub.add_model(
        "meta-llama/Llama-3.1-8B-Instruct",
        license="llama3.1",
        gated="manual",
        downloads=5_000_000,
        likes=4_200,
        total_params=8_030_261_248,
    )
    hub.add_model(
        "deepseek-ai/DeepSeek-R1",
        license="mit",
        downloads=1_000_000,
        likes=12_000,
        total_params=684_531_386_000,
    )
    run = catalog_sync(timeout=2)
    llama = CatalogModel.objects.get(slug="llama-3.1-8b-instruct")
    assert (llama.downloads, llama.likes, llama.gated, llama.license) == (
        5_000_000,
        4_200,
        True,
        "llama3.1",
    )
    assert str(llama.parameters_b) == "8.03" and llama.synced_at is not None
    assert llama.hub_last_modified.year == 2025
    r1 = CatalogModel.objects.get(slug="deepseek-r1")
    assert str(r1.parameters_b) == "684.53"  # safetensors total, as the hub reports it
    assert any(p.startswith("/api/models/meta-llama/Llama-3.1-8B-Instruct") for p in hub.requests)
    # Every other entry was unknown to this hub: left as it was, and the run says so.
    assert not run.ok and run.updated == 2
    assert "RepositoryNotFoundError" in run.message or "404" in run.message


def test_a_hub_that_errors_or_times_out_leaves_the_catalog_as_it_was(catalog, hub):
    qwen = "Qwen/Qwen2.5-7B-Instruct"
    hub.add_model(qwen, license="other", downloads=1, total_params=1)
    hub.broken.add(qwen)
    hub.add_model("Qwen/QwQ-32B", downloads=7, total_params=2)
    hub.slow.add("Qwen/QwQ-32B")
    before = {m.slug: (m.license, m.downloads, m.parameters_b) for m in CatalogModel.objects.all()}
    run = catalog_sync(timeout=1)
    after = {m.slug: (m.license, m.downloads, m.parameters_b) for m in CatalogModel.objects.all()}
    assert after == before
    assert not run.ok and run.updated == 0 and run.failed > 0
    assert "qwen2.5-7b-instruct:" in run.message and "qwq-32b:" in run.message
    assert CatalogSync.objects.get() == run


def test_catalog_sync_command_reports(catalog, hub, capsys):
    from django.core.management import call_command

    call_command("catalog_sync", "--timeout", "1")
    assert capsys.readouterr().out.startswith("PARTIAL: updated 0")


def test_sync_keeps_the_licence_ids_the_catalog_curates(catalog, hub):
    # The hub calls Qwen's and Meta's own licences "other"; the catalog knows their ids.
    hub.add_model("Qwen/Qwen2.5-72B-Instruct", license="other", downloads=9, total_params=1)
    hub.add_model(
        "meta-llama/Llama-4-Scout-17B-16E-Instruct", license="other", downloads=8, total_params=1
    )
    # Where the card names the licence (license_name), that name is the id.
    hub.add_model("Qwen/Qwen3-8B", license="other", downloads=7, total_params=8_190_735_360)
    hub.models["Qwen/Qwen3-8B"]["cardData"]["license_name"] = "Qwen-Research"
    hub.add_model("Qwen/QwQ-32B", license="apache-2.0", downloads=6, total_params=1)
    catalog_sync(timeout=2)
    licences = dict(CatalogModel.objects.values_list("slug", "license"))
    assert licences["qwen2.5-72b-instruct"] == "qwen"
    assert licences["llama-4-scout-17b-16e-instruct"] == "llama4"
    assert licences["qwen3-8b"] == "qwen-research"
    assert licences["qwq-32b"] == "apache-2.0"
    # The other facts of those entries were still refreshed.
    assert CatalogModel.objects.get(slug="qwen2.5-72b-instruct").downloads == 9
    assert "other" not in licences.values()
