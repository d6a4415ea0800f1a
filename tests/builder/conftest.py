import json
import struct
from pathlib import Path

import pytest

from deployments.demo_model import write_demo_gguf
from tests.deployments.conftest import (  # noqa: F401 - shared fixtures
    distinct_replica_ids,
    docker_client,
    docker_pool,
    local_pool,
    stop_session_engines,
)
from tests.marketplace.hub_server import HubServer


@pytest.fixture
def hub(settings):
    with HubServer() as server:
        settings.HF_ENDPOINT = server.url
        yield server


@pytest.fixture(autouse=True)
def _builder_dirs(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.GANTRY_MODEL_DIRS = [str(tmp_path / "models")]
    settings.RUNTIME_DIR = tmp_path / "replicas"
    yield
    stop_session_engines()


@pytest.fixture
def demo_gguf(tmp_path) -> Path:
    return write_demo_gguf(tmp_path / "src" / "tiny.gguf")


def safetensors_bytes(tensors: dict[str, tuple[str, list[int]]]) -> bytes:
    """A real safetensors file: header + zeroed data for the given dtypes and shapes."""
    sizes = {"BF16": 2, "F16": 2, "F32": 4}
    header, offset = {}, 0
    for name, (dtype, shape) in tensors.items():
        n = 1
        for d in shape:
            n *= d
        header[name] = {
            "dtype": dtype,
            "shape": shape,
            "data_offsets": [offset, offset + n * sizes[dtype]],
        }
        offset += n * sizes[dtype]
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + b"\0" * offset


LLAMA_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "num_hidden_layers": 2,
    "hidden_size": 64,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 2048,
    "torch_dtype": "bfloat16",
}


def gguf_build(org, gguf: Path, name: str):
    """An uploaded GGUF, inspected into a build draft, as the wizard's first steps make."""
    from django.core.files.uploadedfile import SimpleUploadedFile

    from builder import services
    from tests.conftest import owner_of

    upload = services.upload_create(
        organization=org,
        user=owner_of(org),
        files=[SimpleUploadedFile(gguf.name, gguf.read_bytes())],
    )
    return services.build_create(
        organization=org, user=owner_of(org), name=name, source_kind="upload", upload_id=upload.pk
    )
