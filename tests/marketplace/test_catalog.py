from collections import Counter

from django.core.management import call_command

from marketplace.models import CatalogModel, Managed, ServingProfile
from marketplace.services import catalog_load


def test_catalog_covers_the_families_gpu_types_and_cpu(catalog):
    models = CatalogModel.objects.filter(organization=None)
    assert models.count() >= 25
    families = Counter(models.values_list("family", flat=True))
    assert families["deepseek"] >= 6 and families["qwen"] >= 8 and families["llama"] >= 6
    assert models.filter(slug="gantry-tiny-random-llama").exists()
    assert models.filter(active_parameters_b__isnull=False).count() >= 5  # MoE entries
    gpu_types = set(ServingProfile.objects.values_list("gpu_type__code", flat=True))
    assert len(gpu_types - {"cpu"}) >= 4 and "cpu" in gpu_types
    engines = set(ServingProfile.objects.values_list("engine", flat=True))
    assert engines == {"vllm", "sglang", "llama.cpp"}
    # Every entry names where its facts came from.
    assert all(m.sources for m in models)


def test_load_is_idempotent_and_keeps_operator_entries(catalog):
    llama = CatalogModel.objects.get(slug="llama-3.1-8b-instruct")
    llama.description = "Our house favourite."
    llama.managed_by = Managed.OPERATOR
    llama.save()
    CatalogModel.objects.create(
        slug="house-model",
        name="House model",
        family="other",
        parameters_b=1,
        context_length=4096,
        license="proprietary",
        num_layers=1,
        hidden_size=1,
        num_heads=1,
        num_kv_heads=1,
        head_dim=1,
        managed_by=Managed.OPERATOR,
    )
    # A stored fit from an older estimate is brought up to date; the entry is not touched.
    ServingProfile.objects.filter(model=llama).update(fits=False, fit_reason="stale")
    before = CatalogModel.objects.count(), ServingProfile.objects.count()
    result = catalog_load()
    assert all(p.fits and p.fit_reason.startswith("Fits") for p in llama.profiles.all())
    assert result.created == 0 and result.kept == 1
    assert (CatalogModel.objects.count(), ServingProfile.objects.count()) == before
    assert CatalogModel.objects.get(slug="llama-3.1-8b-instruct").description == (
        "Our house favourite."
    )
    assert CatalogModel.objects.filter(slug="house-model").exists()


def test_loadcatalog_command(db, capsys):
    call_command("loadcatalog")
    assert "created" in capsys.readouterr().out
    assert CatalogModel.objects.count() >= 25


def test_profiles_record_their_fit(catalog):
    r1_h100 = ServingProfile.objects.get(model__slug="deepseek-r1", name="h100x8-fp8")
    assert not r1_h100.fits and r1_h100.memory_required_gib > r1_h100.memory_available_gib
    demo = ServingProfile.objects.get(model__slug="gantry-tiny-random-llama")
    assert demo.fits and demo.gpu_type.code == "cpu"
