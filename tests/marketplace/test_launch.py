"""Every catalog profile is an exact launch that the engine's flag schema and the model's
facts accept; loadcatalog refuses one that is not."""

from pathlib import Path

import pytest
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.core.management.base import CommandError

from deployments.flags import parse_engine_args, render_args
from marketplace.fit import profile_fit
from marketplace.launch import LARGE_MOE_B, profile_launch
from marketplace.models import CatalogModel, ServingProfile
from marketplace.services import CATALOG_DIR


@pytest.fixture
def h100_pool(db):
    from tests.deployments.conftest import make_pool, make_region

    region = make_region("eu-west", "EU West")
    return make_pool(region, "h100-a", "h100-80gb", [("n1", 8)], driver="kubernetes")


CONTEXT = {"vllm": "--max-model-len", "sglang": "--context-length", "llama.cpp": "--n_ctx"}
SEQS = {"vllm": "--max-num-seqs", "sglang": "--max-running-requests"}
FRACTION = {"vllm": "--gpu-memory-utilization", "sglang": "--mem-fraction-static"}
TP = {"vllm": "--tensor-parallel-size", "sglang": "--tp-size"}


def _contains(seq: list[str], part: list[str]) -> bool:
    return any(seq[i : i + len(part)] == part for i in range(len(seq) - len(part) + 1))


def test_every_catalog_profile_renders_a_launch_the_schema_and_facts_accept(catalog):
    profiles = list(ServingProfile.objects.select_related("model", "gpu_type"))
    assert len(profiles) >= 60
    for p in profiles:
        m, launch = p.model, profile_launch(p)
        where = f"{m.slug}/{p.name}"
        # Pinned by loadcatalog, and the schema of that version re-renders it unchanged.
        assert launch.engine_version == p.engine_version != "", where
        pairs = parse_engine_args(p.engine, launch.engine_args, version=launch.engine_version)
        assert render_args(pairs) == launch.engine_args, where
        flags = {f.name: v for f, v in pairs}
        assert flags[CONTEXT[p.engine]] == p.max_model_len <= 1_048_576, where
        assert _contains(launch.argv, launch.engine_args) and launch.model_ref in launch.argv
        tp = launch.tensor_parallel
        assert m.num_heads % tp == 0, where
        assert tp == p.gpu_count or p.parallel_reason, where
        if p.engine == "llama.cpp":
            assert p.gpu_count == 1 and p.gpu_type.code == "cpu", where
            assert launch.model_ref.endswith(".gguf") or launch.model_ref.startswith("demo:")
            continue
        assert flags[TP[p.engine]] == tp, where
        assert flags[SEQS[p.engine]] == p.concurrent_sequences, where
        assert flags[FRACTION[p.engine]] == float(p.gpu_memory_utilization), where
        repos = m.quant_repos
        assert launch.model_ref in {m.hf_repo, *repos.values()}, where
        if p.quantization == "awq-int4":
            assert launch.model_ref == repos["awq-int4"] != m.hf_repo, where
        if p.quantization == "fp8":
            assert (launch.model_ref == repos.get("fp8")) != (flags.get("--quantization") == "fp8")
        if p.quantization == "bf16":
            assert "--quantization" not in flags and launch.model_ref not in repos.values()
        large_moe = m.is_moe and float(m.parameters_b) >= LARGE_MOE_B and tp > 1
        expert = flags.get("--enable-expert-parallel") or flags.get("--ep-size") == tp
        assert bool(expert) == large_moe, where
        # The stored fit is the per-GPU one.
        assert p.fits == profile_fit(p).fits and p.fit_reason == profile_fit(p).sentence
    not_offered = {f"{p.model.slug}/{p.name}" for p in profiles if not p.fits}
    assert not_offered == {"deepseek-r1/h100x8-fp8"}


def test_deepseek_r1_on_8_h200_is_this_exact_command(catalog):
    p = ServingProfile.objects.get(model__slug="deepseek-r1", name="h200x8-fp8")
    launch = profile_launch(p)
    assert launch.argv == [
        *["python3", "-m", "sglang.launch_server", "--model-path", "deepseek-ai/DeepSeek-R1"],
        *["--host", "<replica address>", "--port", "8000"],
        *["--tp-size", "8", "--ep-size", "8"],
        *["--context-length", "65536", "--max-running-requests", "8"],
        *["--mem-fraction-static", "0.9", "--enable-metrics"],
        *["--served-model-name", "<deployment name>", "--api-key", "<elided>"],
    ]
    assert launch.engine_version == "0.5.3"
    # FP8 from the checkpoint itself: no online quantization flag.
    assert "--quantization" not in launch.engine_args


def test_fp8_of_a_16_bit_checkpoint_quantizes_on_load_and_awq_loads_its_repo(catalog):
    online = profile_launch(ServingProfile.objects.get(model__slug="qwq-32b", name="h100-fp8"))
    assert _contains(online.engine_args, ["--quantization", "fp8"])
    assert online.model_ref == "Qwen/QwQ-32B"
    awq = profile_launch(
        ServingProfile.objects.get(model__slug="qwen2.5-72b-instruct", name="a100x2-awq")
    )
    assert awq.model_ref == "Qwen/Qwen2.5-72B-Instruct-AWQ"
    assert _contains(awq.engine_args, ["--tensor-parallel-size", "2"])
    moe_profile = ServingProfile.objects.get(model__slug="qwen3-235b-a22b", name="h100x8-fp8")
    moe = profile_launch(moe_profile)
    assert moe.model_ref == "Qwen/Qwen3-235B-A22B-FP8"
    assert "--enable-expert-parallel" in moe.engine_args and "--quantization" not in moe.engine_args


def _catalog_dir(tmp_path: Path, profile: str, extra: str = "") -> Path:
    (tmp_path / "_defaults.yaml").write_text((CATALOG_DIR / "_defaults.yaml").read_text())
    (tmp_path / "test.yaml").write_text(
        f"""models:
  - slug: test-model
    name: Test model
    family: qwen
    hf_repo: Org/Test-Model
    parameters_b: 14.77
    context_length: 32768
    license: apache-2.0
    num_layers: 48
    hidden_size: 5120
    num_heads: 40
    num_kv_heads: 8
    head_dim: 128
{extra}    profiles:
      - {profile}
"""
    )
    return tmp_path


@pytest.mark.parametrize(
    ("profile", "words"),
    [
        (
            "{name: h100x3, engine: vllm, gpu: h100-80gb, count: 3, quant: bf16, max_len: 8192,"
            " tp: 3, tp_reason: odd}",
            "test-model/h100x3: tensor parallel 3 does not divide the 40 attention heads",
        ),
        (
            "{name: a100x2, engine: vllm, gpu: a100-80gb, count: 2, quant: bf16, max_len: 8192,"
            " tp: 1}",
            "tensor parallel 1 differs from the GPU count 2; give parallel_reason",
        ),
        (
            "{name: awq, engine: vllm, gpu: a100-80gb, count: 1, quant: awq-int4, max_len: 8192}",
            "awq-int4 needs the awq-int4 repo listed in quant_repos",
        ),
        (
            "{name: flags, engine: vllm, gpu: h100-80gb, count: 1, quant: bf16, max_len: 8192,"
            " args: ['--trust-remote-code']}",
            "'--trust-remote-code' is set by Gantry or never allowed on vllm 0.11.0",
        ),
        (
            "{name: twice, engine: sglang, gpu: h100-80gb, count: 1, quant: bf16, max_len: 8192,"
            " args: ['--tp', '2']}",
            "--tp-size is rendered from the profile's fields",
        ),
        (
            "{name: ctx, engine: vllm, gpu: h100-80gb, count: 1, quant: bf16, max_len: 9999999}",
            "'9999999' is not allowed for --max-model-len",
        ),
        (
            "{name: old, engine: vllm, gpu: h100-80gb, count: 1, quant: bf16, max_len: 8192,"
            " engine_version: '0.4.0'}",
            "vllm versions: 0.11.0",
        ),
        (
            "{name: gguf, engine: llama.cpp, gpu: cpu, count: 1, quant: q4_k_m, max_len: 8192,"
            " model_ref: Test-Q8_0.gguf}",
            "give the Q4_K_M GGUF file",
        ),
    ],
)
def test_loadcatalog_refuses_a_profile_whose_launch_does_not_validate(profile, words, tmp_path, db):
    folder = _catalog_dir(tmp_path, profile)
    with pytest.raises(CommandError) as exc:
        call_command("loadcatalog", "--dir", str(folder))
    message = str(exc.value)
    assert "test.yaml: test-model/" in message and "launch does not validate" in message
    assert words in message
    assert not CatalogModel.objects.exists()  # nothing half-loaded


def test_tensor_parallel_below_the_gpu_count_needs_a_reason_and_renders_data_parallel(tmp_path, db):
    profile = (
        "{name: l40s-x2, engine: sglang, gpu: l40s-48gb, count: 2, quant: bf16, max_len: 8192,"
        " seqs: 4, tp: 1, tp_reason: 'fits one GPU; two copies serve twice the requests'}"
    )
    call_command("loadcatalog", "--dir", str(_catalog_dir(tmp_path, profile)))
    launch = profile_launch(ServingProfile.objects.get(name="l40s-x2"))
    assert launch.engine_args[:4] == ["--tp-size", "1", "--dp-size", "2"]
    assert any("two copies" in n for n in launch.notes)


def test_deploy_form_disables_a_profile_that_does_not_fit_and_refuses_it(
    catalog, org_a, web_client, h100_pool
):
    from django.urls import reverse

    from deployments.models import Deployment
    from tests.conftest import owner_of

    client = web_client(owner_of(org_a), org_a)
    url = reverse("marketplace:deploy", args=["deepseek-r1"])
    page = client.get(url, {"profile": "h200x8-fp8"}).content.decode()
    assert 'value="h100x8-fp8"  disabled title="Does not fit: needs 88.7 GiB per GPU' in page
    assert "(not offered: does not fit its GPUs)" in page
    assert "--tp-size 8 --ep-size 8" in page  # the launch of the previewed profile
    response = client.post(url, {"profile": "h100x8-fp8", "region": "eu-west", "name": ""})
    assert response.status_code == 400
    assert "profile: h100x8-fp8: Does not fit: needs 88.7 GiB per GPU" in response.content.decode()
    assert not Deployment.objects.exists()


def test_admin_refuses_a_profile_edit_whose_launch_does_not_validate(catalog):
    from django.forms.models import model_to_dict

    from marketplace.admin import ProfileForm

    profile = ServingProfile.objects.get(model__slug="qwen2.5-72b-instruct", name="a100x2-awq")
    data = model_to_dict(profile)
    assert ProfileForm(data=data, instance=profile).is_valid()
    data["model_ref"] = "Qwen/Qwen2.5-72B-Instruct"  # the BF16 repo under an AWQ profile
    form = ProfileForm(data=data, instance=profile)
    assert not form.is_valid()
    assert "awq-int4 needs the awq-int4 repo listed in quant_repos" in str(form.errors)
    data.update(model_ref="Qwen/Qwen2.5-72B-Instruct-AWQ", tensor_parallel=3)
    form = ProfileForm(data=data, instance=ServingProfile.objects.get(pk=profile.pk))
    assert not form.is_valid() and "differs from the GPU count 2" in str(form.errors)


def test_an_operator_edit_that_breaks_the_launch_shows_why_and_cannot_deploy(
    catalog, org_a, api_client_for, h100_pool
):
    from deployments.models import Deployment

    ServingProfile.objects.filter(model__slug="qwen3-8b", name="h100-bf16").update(
        engine_args=["--trust-remote-code"]
    )
    api = api_client_for(org_a)
    profiles = {p["name"]: p for p in api.get("/api/v1/models/qwen3-8b").json()["profiles"]}
    broken = profiles["h100-bf16"]
    assert broken["launch"] is None and "--trust-remote-code" in broken["launch_error"]
    response = api.post(
        "/api/v1/deployments", {"model": "qwen3-8b", "profile": "h100-bf16"}, format="json"
    )
    assert response.status_code == 400
    assert "qwen3-8b/h100-bf16" in " ".join(response.json()["profile"])
    assert not Deployment.objects.exists()


def test_outside_review_an_explicit_arg_takes_the_place_of_the_rendered_flag(catalog):
    # A published tuning or a build's options: the launch shows the flag that will run.
    profile = ServingProfile.objects.get(model__slug="qwen3-8b", name="l40s-bf16")
    profile.engine_args = ["--max-num-seqs", "64"]
    launch = profile_launch(profile)
    assert launch.engine_args.count("--max-num-seqs") == 1
    assert _contains(launch.engine_args, ["--max-num-seqs", "64"])
    assert "--max-num-seqs from the profile's args, not its fields" in launch.notes
    with pytest.raises(ValidationError) as exc:
        profile_launch(profile, strict=True)
    assert "--max-num-seqs is rendered from the profile's fields" in str(exc.value)


def test_a_build_on_the_nodes_weights_cache_shows_only_its_file_name(catalog, org_a):
    from deployments.models import GpuType

    model = CatalogModel.objects.get(slug="qwen3-8b")
    model.pk, model.organization, model.slug = None, org_a, "my-build"
    model.save()
    profile = ServingProfile.objects.create(
        model=model,
        name="build-1",
        engine="llama.cpp",
        gpu_type=GpuType.objects.get(code="cpu"),
        quantization="q8_0",
        max_model_len=4096,
        model_ref="/srv/gantry/weights/abc123/my-model.gguf",
    )
    launch = profile_launch(profile)
    assert launch.argv[:5] == [
        "python3",
        "-m",
        "llama_cpp.server",
        "--model",
        "<weights cache>/my-model.gguf",
    ]
    assert not any("/srv/gantry" in a for a in launch.argv)
    assert launch.engine_args == ["--n_ctx", "4096", "--cache", "true"]


@pytest.mark.parametrize(
    ("quant", "file", "ok"),
    [
        ("q4_k_m", "Qwen3-8B-Q4_K_M.gguf", True),
        ("q4_k_m", "Qwen3-8B-Q8_0.gguf", False),
        ("bf16", "model-f16.gguf", True),  # the builder files F16 under bf16
        ("bf16", "model-BF16.gguf", True),
        ("f32", "model-Q4_K_M.gguf", False),
        ("q8_0", "model.gguf", True),  # a name that says nothing is taken at its word
    ],
)
def test_a_gguf_file_must_not_name_another_quant(quant, file, ok):
    from marketplace.launch import _gguf_names_other_quant

    assert _gguf_names_other_quant(file, quant) is not ok
