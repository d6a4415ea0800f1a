import json

import pytest
from django.core.exceptions import ValidationError
from django.core.files.uploadedfile import SimpleUploadedFile

from builder import services, weights
from builder.models import Build, Upload
from builder.specs import render_dockerfile, spec_document
from tests.builder.conftest import LLAMA_CONFIG, gguf_build, safetensors_bytes
from tests.conftest import owner_of

SMALL_TENSORS = {
    "model.embed_tokens.weight": ("BF16", [128, 64]),
    "model.layers.0.mlp.up_proj.weight": ("BF16", [64, 64]),
}


def add_safetensors_repo(hub, repo, config=None, total=None, gated_token=None):
    hub.add_model(repo, license="apache-2.0")
    files = {
        "config.json": json.dumps(config or LLAMA_CONFIG).encode(),
        "tokenizer_config.json": json.dumps({"chat_template": "{{ messages }}"}).encode(),
        "tokenizer.json": b"{}",
        "model.safetensors": safetensors_bytes(SMALL_TENSORS),
    }
    hub.add_files(
        repo, files, safetensors_total=total or 128 * 64 + 64 * 64, gated_token=gated_token
    )


def build_api(api, **body):
    return api.post("/api/v1/builds", body, format="json")


def test_hub_safetensors_repo_is_inspected_from_metadata_only(
    hub, org_a, api_client_for, local_pool, db
):
    add_safetensors_repo(hub, "acme/tiny-llama")
    from builder.services import source_inspect

    facts, revision, _ = source_inspect(
        organization=org_a, source_kind="huggingface", repo_id="acme/tiny-llama", revision="main"
    )
    assert (facts.format, facts.architecture, facts.num_layers, facts.num_kv_heads) == (
        "safetensors",
        "LlamaForCausalLM",
        2,
        2,
    )
    assert facts.parameters == 128 * 64 + 64 * 64 and facts.has_chat_template
    assert facts.license == "apache-2.0" and revision == hub.models["acme/tiny-llama"]["sha"]
    # Only small files were fetched, never the weights.
    assert not any("model.safetensors" in r and not r.startswith("HEAD") for r in hub.requests)


def test_hub_gguf_repo_is_inspected_without_downloading_it(hub, org_a, demo_gguf, local_pool):
    hub.add_model("acme/tiny-gguf", license="mit")
    hub.add_files(
        "acme/tiny-gguf",
        {"tiny-f32.gguf": demo_gguf.read_bytes()},
        gguf={
            "total": 108_000,
            "architecture": "llama",
            "context_length": 512,
            "chat_template": "x",
        },
    )
    from builder.services import source_inspect

    facts, _, _ = source_inspect(
        organization=org_a, source_kind="huggingface", repo_id="acme/tiny-gguf"
    )
    assert facts.format == "gguf" and facts.architecture == "gguf:llama"
    assert facts.context_length == 512 and facts.total_bytes == demo_gguf.stat().st_size
    assert not any(r.endswith(".gguf") and not r.startswith("HEAD") for r in hub.requests)


@pytest.mark.parametrize(
    ("setup", "source", "field", "words"),
    [
        (None, {"kind": "huggingface", "repo_id": "not a repo"}, "repo_id", "Use owner/name"),
        (
            None,
            {"kind": "huggingface", "repo_id": "acme/missing"},
            "repo_id",
            "No repo acme/missing",
        ),
        (
            "plain",
            {"kind": "huggingface", "repo_id": "acme/plain", "revision": "v9"},
            "revision",
            "has no revision 'v9'",
        ),
        ("gated", {"kind": "huggingface", "repo_id": "acme/gated"}, "token", "is gated"),
        (
            "gated",
            {"kind": "huggingface", "repo_id": "acme/gated", "token": "hf_wrong"},
            "token",
            "This token has no access",
        ),
        (
            "exotic",
            {"kind": "huggingface", "repo_id": "acme/exotic"},
            "source",
            "Architecture FooForBar is not served",
        ),
        (
            "huge",
            {"kind": "huggingface", "repo_id": "acme/huge"},
            "source",
            "Too large for every pool",
        ),
        (None, {"kind": "path", "path": "/etc"}, "path", "not on storage staff allowed"),
    ],
)
def test_bad_sources_are_refused_with_the_field_named_and_nothing_kept(
    setup, source, field, words, hub, org_a, api_client_for, local_pool
):
    if setup == "plain":
        add_safetensors_repo(hub, "acme/plain")
    if setup == "gated":
        add_safetensors_repo(hub, "acme/gated", gated_token="hf_right")
    if setup == "exotic":
        add_safetensors_repo(
            hub, "acme/exotic", config={**LLAMA_CONFIG, "architectures": ["FooForBar"]}
        )
    if setup == "huge":
        add_safetensors_repo(hub, "acme/huge", total=2_000_000_000_000)
    response = build_api(api_client_for(org_a), name="x", source=source, engine="")
    assert response.status_code == 400, response.content
    assert words in " ".join(response.json()[field]), response.json()
    assert not Build.objects.exists()


def test_gated_repo_with_the_right_token_is_inspected_and_the_token_never_shown(
    hub, org_a, api_client_for, local_pool
):
    add_safetensors_repo(hub, "acme/gated", gated_token="hf_secret_token_123")
    api = api_client_for(org_a)
    response = build_api(
        api,
        name="gated-model",
        engine="vllm",
        source={"kind": "huggingface", "repo_id": "acme/gated", "token": "hf_secret_token_123"},
    )
    assert response.status_code == 201, response.content
    build = Build.objects.get()
    assert build.token_encrypted and "hf_secret_token_123" not in build.token_encrypted
    assert "hf_secret_token_123" not in response.content.decode()
    assert "hf_secret_token_123" not in api.get(f"/api/v1/builds/{build.pk}").content.decode()


@pytest.mark.parametrize(
    ("spec", "field", "words"),
    [
        ({"env": {"A; rm -rf /": "1"}}, "env", "is not a valid variable name"),
        ({"env": {"MODE": "x\nRUN curl evil"}}, "env", "may only hold"),
        ({"env": {"LD_PRELOAD": "/tmp/x.so"}}, "env", "set by Gantry"),
        ({"options": {"n_threads": "4; rm -rf /"}}, "options", "n_threads must be from 1 to 256"),
        ({"options": {"entrypoint": "/bin/sh"}}, "options", "not an option of llama.cpp"),
        ({"engine": "vllm"}, "engine", "vllm does not serve gguf:llama"),
        ({"max_context": 999999}, "max_context", "Choose from 128 to 512 tokens"),
    ],
)
def test_spec_values_that_could_inject_are_refused(
    spec, field, words, org_a, api_client_for, demo_gguf, local_pool
):
    api = api_client_for(org_a)
    upload = api.post(
        "/api/v1/uploads",
        {"files": [SimpleUploadedFile("tiny.gguf", demo_gguf.read_bytes())]},
        format="multipart",
    )
    assert upload.status_code == 201, upload.content
    response = build_api(
        api, name="tiny", source={"kind": "upload", "upload": upload.json()["id"]}, **spec
    )
    assert response.status_code == 400, response.content
    assert words in " ".join(response.json()[field])
    assert not Build.objects.exists()


@pytest.mark.parametrize(
    ("files", "words"),
    [
        ([("notes.gguf", b"hello, not a model")], "is not a GGUF model file"),
        ([("README.md", b"# hi")], "needs config.json and at least one .safetensors"),
        ([("config.json", b"{}"), ("model.safetensors", b"garbage!")], "not a safetensors file"),
    ],
)
def test_an_upload_that_is_not_a_model_is_refused_and_not_kept(
    files, words, org_a, api_client_for, settings
):
    response = api_client_for(org_a).post(
        "/api/v1/uploads",
        {"files": [SimpleUploadedFile(n, d) for n, d in files]},
        format="multipart",
    )
    assert response.status_code == 400
    assert words in " ".join(response.json()["upload"])
    assert not Upload.objects.exists()
    uploads = settings.MEDIA_ROOT / "uploads"
    assert not uploads.exists() or not any(p.is_file() for p in uploads.rglob("*"))


def test_dockerfile_is_rendered_from_validated_values_only(org_a, demo_gguf, local_pool, db):
    build = gguf_build(org_a, demo_gguf, "tiny")
    build = services.build_configure(
        build=build, engine="llama.cpp", options={"n_threads": 2}, env={"LOG_FORMAT": "json"}
    )
    text = render_dockerfile(spec_document(build), build_id=build.pk, org="alpha", name="tiny")
    lines = text.splitlines()
    assert lines[1] == "FROM gantry/llamacpp:0.3.36"
    assert 'LOG_FORMAT="json"' in text and 'GANTRY_MAX_CONTEXT="512"' in text
    assert '"io.gantry.spec-hash"' not in text and "io.gantry.spec-hash=" in text
    # Only configuration: the image is made without a layer of its own.
    instructions = [line.split()[0] for line in lines if line and line[0].isupper()]
    assert instructions == ["FROM", "ENV", "LABEL"]
    assert "tiny.gguf" not in text  # weights are never baked in


def test_safetensors_headers_are_read_when_the_hub_gives_no_summary(hub, org_a, local_pool):
    add_safetensors_repo(hub, "acme/no-summary")
    del hub.models["acme/no-summary"]["safetensors"]
    from builder.services import source_inspect

    facts, _, _ = source_inspect(
        organization=org_a, source_kind="huggingface", repo_id="acme/no-summary"
    )
    assert facts.parameter_dtypes == {"BF16": 128 * 64 + 64 * 64}
    # Read with ranged requests on the weights file: its header only, never the whole file.
    assert any("model.safetensors" in r for r in hub.requests)


def test_a_fetched_file_whose_hash_does_not_match_is_refused(hub, org_a, demo_gguf, local_pool):
    from builder import services
    from builder.models import WeightsCache

    hub.add_model("acme/tampered", license="mit")
    hub.add_files(
        "acme/tampered",
        {"t.gguf": demo_gguf.read_bytes()},
        gguf={"total": 1, "architecture": "llama", "context_length": 512},
    )
    build = services.build_create(
        organization=org_a,
        user=owner_of(org_a),
        name="tampered",
        source_kind="huggingface",
        repo_id="acme/tampered",
    )
    # The file changes on its way (same size, other bytes), so its hash no longer matches.
    original = hub.files["acme/tampered"]["t.gguf"]
    good_etag = __import__("hashlib").sha256(original).hexdigest()
    hub.files["acme/tampered"]["t.gguf"] = original[:-4] + b"XXXX"
    hub.fixed_etags = {"t.gguf": good_etag}
    cache = weights.weights_cache_for(build)
    with pytest.raises(Exception, match="SHA-256 does not match"):
        weights.weights_prefetch(cache_id=cache.pk, build_id=build.pk)
    cache.refresh_from_db()
    assert cache.status == WeightsCache.Status.FAILED


def test_build_submit_enqueues_only_after_a_whole_commit(
    org_a, demo_gguf, local_pool, django_capture_on_commit_callbacks
):
    """The wizard and the API both submit through build_submit: a bad spec keeps nothing and
    enqueues nothing; a good one enqueues the build and the prefetch once, after commit."""
    from builder.submit import build_submit

    upload = services.upload_create(
        organization=org_a,
        user=owner_of(org_a),
        files=[SimpleUploadedFile("tiny.gguf", demo_gguf.read_bytes())],
    )
    source = {"source_kind": "upload", "upload_id": upload.pk}
    with (
        django_capture_on_commit_callbacks(execute=False) as callbacks,
        pytest.raises(ValidationError),
    ):
        build_submit(
            organization=org_a,
            user=owner_of(org_a),
            name="tiny",
            spec={"engine": "llama.cpp", "options": {"n_threads": 9999}},
            **source,
        )
    assert callbacks == [] and not Build.objects.exists()
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        draft = build_submit(organization=org_a, user=owner_of(org_a), name="draft", **source)
    assert callbacks == [] and draft.status == "inspected"  # the wizard configures it next
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        build = build_submit(
            organization=org_a,
            user=owner_of(org_a),
            name="tiny",
            spec={"engine": "llama.cpp", "options": {"n_threads": 2}},
            **source,
        )
    assert len(callbacks) == 2 and build.status == "queued" and build.options == {"n_threads": 2}
