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


def test_gpu_replica_renders_a_valid_deployment_service_and_secret():
    deployment, service, secret = render_manifests(
        spec(), {"namespace": "inference", "node_selector": {"pool": "h100-a"}}
    )
    d = _validate(deployment, "V1Deployment")
    s = _validate(service, "V1Service")
    k = _validate(secret, "V1Secret")
    container = d.spec.template.spec.containers[0]
    assert d.metadata.name == "gantry-r42" and d.metadata.namespace == "inference"
    # Limits only: NVIDIA's device plugin picks (and isolates) the devices.
    assert container.resources.limits == {"nvidia.com/gpu": "2", "cpu": "4", "memory": "16Gi"}
    assert container.resources.requests == {"cpu": "1", "memory": "16Gi"}
    assert d.spec.template.spec.node_selector == {
        "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3",
        "pool": "h100-a",
    }
    assert d.spec.template.spec.tolerations[0].key == "nvidia.com/gpu"
    assert container.command[:3] == ["python3", "-m", "vllm.entrypoints.openai.api_server"]
    assert container.command[container.command.index("--max-model-len") + 1] == "8192"
    assert container.command[-2:] == ["--served-model-name", "chat"]
    assert container.image == "vllm/vllm-openai:v0.11.0"
    assert container.readiness_probe.http_get.path == "/health"
    # The Service selects exactly this replica's pod.
    assert s.spec.selector == d.spec.selector.match_labels == {"gantry.io/replica": "42"}
    assert set(d.spec.selector.match_labels.items()) <= set(d.spec.template.metadata.labels.items())
    assert s.spec.ports[0].port == container.ports[0].container_port == 8000
    assert k.metadata.name == "gantry-r42" and k.metadata.namespace == "inference"


def test_the_engine_key_is_only_in_the_secret_and_the_engine_listens_on_the_pod_ip():
    from deployments.engine_auth import engine_api_key

    deployment, service, secret = render_manifests(spec(), {})
    key = engine_api_key(42)
    assert secret["stringData"] == {"api-key": key}
    assert key not in json.dumps(deployment) and key not in json.dumps(service)
    container = _validate(deployment, "V1Deployment").spec.template.spec.containers[0]
    env = {e.name: e for e in container.env}
    assert env["VLLM_API_KEY"].value_from.secret_key_ref.name == "gantry-r42"
    assert env["VLLM_API_KEY"].value_from.secret_key_ref.key == "api-key"
    assert env["POD_IP"].value_from.field_ref.field_path == "status.podIP"
    assert container.command[container.command.index("--host") + 1] == "$(POD_IP)"
    assert "0.0.0.0" not in container.command


def test_sglang_gets_its_key_through_env_expansion_not_a_literal():
    deployment, _, secret = render_manifests(spec(engine="sglang"), {})
    command = deployment["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[command.index("--api-key") + 1] == "$(GANTRY_ENGINE_KEY)"
    assert secret["stringData"]["api-key"] not in json.dumps(deployment)


def test_an_engine_that_downloads_its_weights_gets_the_hub_token_from_the_secret():
    deployment, _, secret = render_manifests(spec(hub_token="hf_orgtoken123"), {})
    assert secret["stringData"]["hf-token"] == "hf_orgtoken123"
    assert "hf_orgtoken123" not in json.dumps(deployment)  # only named, never inlined
    env = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    hf = next(e for e in env if e["name"] == "HF_TOKEN")
    assert hf["valueFrom"]["secretKeyRef"]["key"] == "hf-token"
    _, _, plain = render_manifests(spec(), {})
    assert "hf-token" not in plain["stringData"]


def test_pods_are_locked_down():
    deployment, _, _ = render_manifests(spec(), {})
    pod = _validate(deployment, "V1Deployment").spec.template.spec
    assert pod.automount_service_account_token is False
    assert pod.enable_service_links is False
    assert pod.security_context.run_as_non_root is True
    assert pod.security_context.run_as_user == 65534
    assert pod.security_context.seccomp_profile.type == "RuntimeDefault"
    ctx = pod.containers[0].security_context
    assert ctx.allow_privilege_escalation is False
    assert ctx.read_only_root_filesystem is True
    assert ctx.privileged is False
    assert ctx.capabilities.drop == ["ALL"]
    # The read-only root leaves the engine a writable /tmp (its $HOME) and /dev/shm.
    mounts = {m.mount_path: m.name for m in pod.containers[0].volume_mounts}
    assert mounts == {"/tmp": "tmp", "/dev/shm": "shm"}
    assert "limits" in deployment["spec"]["template"]["spec"]["containers"][0]["resources"]


def test_cpu_replica_requests_no_gpu_and_mounts_only_its_own_model_file(settings):
    settings.GANTRY_MODEL_DIRS = ["/srv/models"]
    deployment, _, _ = render_manifests(
        spec(
            engine="llama.cpp",
            gpus=1,
            gpu_type="cpu",
            model_ref="/srv/models/alpha/m.gguf",
            engine_args=(),
        ),
        {"models_pvc": "model-cache"},
    )
    d = _validate(deployment, "V1Deployment")
    pod = d.spec.template.spec
    limits = deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert "nvidia.com/gpu" not in limits
    assert pod.node_selector is None and pod.tolerations is None
    assert pod.volumes[0].persistent_volume_claim.claim_name == "model-cache"
    assert pod.volumes[0].persistent_volume_claim.read_only is True
    [mount] = [m for m in pod.containers[0].volume_mounts if m.name == "models"]
    # Just the file, by its path inside the volume: not the folder beside it.
    assert (mount.mount_path, mount.sub_path, mount.read_only) == (
        "/models/m.gguf",
        "alpha/m.gguf",
        True,
    )
    assert "/models/m.gguf" in pod.containers[0].command
    assert pod.containers[0].readiness_probe.tcp_socket.port == 8000


def test_a_tenant_flag_abbreviating_the_host_flag_is_refused():
    from deployments.drivers.base import DriverError

    for args in (("--hos=0.0.0.0",), ("--ho", "0.0.0.0"), ("--API_KEY", "x"), ("--po=1",)):
        with pytest.raises(DriverError, match="is set by Gantry"):
            render_manifests(spec(engine_args=args), {})


def test_client_side_validation_rejects_a_broken_manifest():
    deployment, _, _ = render_manifests(spec(), {})
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
