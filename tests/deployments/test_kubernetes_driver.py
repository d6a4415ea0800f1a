"""The `kubernetes` driver: manifests are rendered and validated by the official client's
own models; a live cluster test runs only when KUBECONFIG is set."""

import json
import os

import pytest
from kubernetes.client import ApiClient

from deployments.drivers.base import ReplicaSpec
from deployments.drivers.kubernetes import render_manifests


class _Response:
    def __init__(self, obj):
        self.data = json.dumps(obj)


def _validate(obj: dict, kind: str):
    """Deserialize with the client's generated models (client-side validation on)."""
    return ApiClient().deserialize(_Response(obj), kind)


def spec(**kw) -> ReplicaSpec:
    base = {
        "replica_id": 42,
        "deployment_id": 7,
        "organization": "alpha",
        "deployment_name": "chat",
        "engine": "vllm",
        "image": "",
        "model_ref": "Qwen/Qwen2.5-7B-Instruct",
        "engine_args": ("--max-model-len", "8192"),
        "gpus": 2,
        "gpu_type": "h100-80gb",
        "node_name": "n1",
        "node_address": "",
        "node_config": {},
    }
    return ReplicaSpec(**{**base, **kw})


def test_gpu_replica_renders_a_valid_deployment_and_service():
    deployment, service = render_manifests(
        spec(), {"namespace": "inference", "node_selector": {"pool": "h100-a"}}
    )
    d = _validate(deployment, "V1Deployment")
    s = _validate(service, "V1Service")
    container = d.spec.template.spec.containers[0]
    assert d.metadata.name == "gantry-r42" and d.metadata.namespace == "inference"
    assert container.resources.limits == {"nvidia.com/gpu": "2"}
    assert d.spec.template.spec.node_selector == {
        "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3",
        "pool": "h100-a",
    }
    assert d.spec.template.spec.tolerations[0].key == "nvidia.com/gpu"
    assert container.command[:3] == ["python3", "-m", "vllm.entrypoints.openai.api_server"]
    assert container.command[-2:] == ["--max-model-len", "8192"]
    assert container.image == "vllm/vllm-openai:v0.11.0"
    assert container.readiness_probe.http_get.path == "/v1/models"
    # The Service selects exactly this replica's pod.
    assert s.spec.selector == d.spec.selector.match_labels == {"gantry.io/replica": "42"}
    assert set(d.spec.selector.match_labels.items()) <= set(d.spec.template.metadata.labels.items())
    assert s.spec.ports[0].port == container.ports[0].container_port == 8000


def test_cpu_replica_requests_no_gpu_and_mounts_models_from_a_pvc():
    deployment, _ = render_manifests(
        spec(
            engine="llama.cpp",
            gpus=1,
            gpu_type="cpu",
            model_ref="/srv/models/m.gguf",
            engine_args=(),
        ),
        {"models_pvc": "model-cache"},
    )
    d = _validate(deployment, "V1Deployment")
    pod = d.spec.template.spec
    assert "limits" not in deployment["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert pod.node_selector is None and pod.tolerations is None
    assert pod.volumes[0].persistent_volume_claim.claim_name == "model-cache"
    assert "/models/m.gguf" in pod.containers[0].command


def test_client_side_validation_rejects_a_broken_manifest():
    deployment, _ = render_manifests(spec(), {})
    del deployment["spec"]["template"]["spec"]["containers"][0]["name"]
    with pytest.raises(ValueError, match="name"):
        _validate(deployment, "V1Deployment")


@pytest.mark.skipif(not os.environ.get("KUBECONFIG"), reason="needs a cluster (KUBECONFIG)")
def test_live_cluster_round_trip(db):
    from deployments.drivers.kubernetes import KubernetesDriver
    from deployments.gpu_types import ensure_gpu_types
    from tests.deployments.conftest import make_pool, make_region

    ensure_gpu_types()
    pool = make_pool(
        make_region("k8s"),
        "cpu",
        "cpu",
        [("any", 8)],
        driver="kubernetes",
        config={"namespace": os.environ.get("GANTRY_TEST_NAMESPACE", "default")},
    )
    driver = KubernetesDriver(pool)
    driver.ping()
    s = spec(engine="llama.cpp", gpus=1, gpu_type="cpu", replica_id=990001, engine_args=())
    started = driver.start(s)
    try:
        assert started.handle in [rt.handle for rt in driver.list()]
        assert driver.status(started.handle).state in {"running", "exited"}
    finally:
        driver.stop(started.handle)
    assert driver.status(started.handle).state == "missing"
