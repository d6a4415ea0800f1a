"""A catalog entry whose CPU profile is a real (tiny) GGUF served by the hub stand-in."""

from decimal import Decimal

import pytest

from deployments.models import GpuType
from marketplace.models import CatalogModel, ServingProfile
from tests.marketplace.hub_server import HubServer

GGUF_REPO = "gantry-test/Tiny-Chat-GGUF"
GGUF_FILE = "Tiny-Chat-Q8_0.gguf"
GATED_REPO = "gantry-test/Gated-Chat"


def gguf_bytes(tmp_path) -> bytes:
    """The demo GGUF, padded at the end to 32 MiB: the hub client reads in 10 MiB chunks,
    so only a file this size shows progress between "nothing" and "all". llama.cpp reads
    tensors by their offsets and ignores bytes after the last one."""
    from deployments.demo_model import write_demo_gguf

    data = write_demo_gguf(tmp_path / "tiny.gguf").read_bytes()
    return data + bytes((32 << 20) - len(data))


def catalog_entry(
    *, slug: str = "tiny-chat", repo: str = GGUF_REPO, gated: bool = False, hf_repo: str = ""
) -> CatalogModel:
    model = CatalogModel.objects.create(
        slug=slug,
        name="Tiny Chat",
        family="llama",
        hf_repo=hf_repo or "gantry-test/Tiny-Chat",
        parameters_b=Decimal("0.01"),
        context_length=512,
        license="apache-2.0",
        gated=gated,
        num_layers=2,
        hidden_size=64,
        num_heads=4,
        num_kv_heads=2,
        head_dim=16,
        managed_by="catalog",
    )
    ServingProfile.objects.create(
        model=model,
        name="cpu-q8",
        engine="llama.cpp",
        gpu_type=GpuType.objects.get(code="cpu"),
        quantization="q8_0",
        max_model_len=512,
        engine_args=["--n_ctx", "512"],
        model_ref=GGUF_FILE,
        weights_repo=repo,
        fits=True,
        memory_required_gib=Decimal("0.3"),
        memory_available_gib=Decimal("16"),
    )
    return model


@pytest.fixture
def hub(settings, tmp_path):
    """The hub stand-in serving a real tiny GGUF (and a gated repo); HF_ENDPOINT points at
    it, for this process and for a worker started after it."""
    import shutil

    from deployments.services.weights import weights_dir

    data = gguf_bytes(tmp_path)
    shutil.rmtree(weights_dir(), ignore_errors=True)  # each test starts with an empty cache
    with HubServer() as server:
        server.add_model(GGUF_REPO, license="apache-2.0")
        server.add_files(GGUF_REPO, {GGUF_FILE: data, "README.md": b"# tiny\n"})
        server.add_model(GATED_REPO, license="llama3.1")
        server.add_files(GATED_REPO, {GGUF_FILE: data}, gated_token="hf_gatedaccess123")
        settings.HF_ENDPOINT = server.url
        settings.HF_TOKEN = ""
        server.gguf = data
        yield server
