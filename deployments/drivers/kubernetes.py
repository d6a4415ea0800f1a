"""The `kubernetes` driver: a replica is a Deployment (one pod) plus a Service.

GPUs are requested as ``nvidia.com/gpu`` limits and steered to the right hardware with a
node selector on the GPU product label that NVIDIA's GPU feature discovery sets. Pods run
locked down: non-root, no privilege escalation, read-only root filesystem, no
capabilities, no service-account token, CPU and memory limits; the engine's key comes
from a per-replica Secret. Pool config: ``namespace``, ``kubeconfig`` / ``context`` (or
in-cluster), ``node_selector`` (merged over the default), ``models_pvc`` (a volume holding
model files) and ``models_root`` (what its root is on Gantry's side), ``cpu``,
``cpu_request``, ``memory``, ``tmp_size``, ``service_domain`` (default
``svc.cluster.local``) and ``port`` (default 8000).
"""

from pathlib import PurePosixPath

from django.conf import settings

from deployments.drivers.base import (
    DriverError,
    DriverUnavailable,
    PoolDriver,
    ReplicaSpec,
    RuntimeInfo,
    RuntimeStatus,
    Started,
)
from deployments.drivers.launch import engine_launch
from deployments.engine_auth import engine_api_key
from deployments.engines import default_image

# Values of the `nvidia.com/gpu.product` node label for each GPU type.
GPU_PRODUCTS = {
    "b200-192gb": "NVIDIA-B200",
    "h200-141gb": "NVIDIA-H200",
    "h100-80gb": "NVIDIA-H100-80GB-HBM3",
    "a100-80gb": "NVIDIA-A100-SXM4-80GB",
    "l40s-48gb": "NVIDIA-L40S",
}
MODELS_MOUNT = "/models"


KEY_ENV = "GANTRY_ENGINE_KEY"
# Paths inside the pod (its own emptyDir volumes), not folders of any host.
POD_TMP, POD_SHM = "/tmp", "/dev/shm"  # noqa: S108
UID = 65534  # "nobody" in Debian-based images, the engines' own included


def _model_volume(spec: ReplicaSpec, config: dict) -> tuple[list, list, str]:
    """(volumes, mounts, model path in the pod): only the replica's own file or folder of
    the models PVC (``subPath``), read-only. ``models_root`` is the path the PVC's root
    holds on Gantry's side (default: the first model folder)."""
    if not config.get("models_pvc") or not spec.model_ref.startswith("/"):
        return [], [], spec.model_ref
    root = PurePosixPath(config.get("models_root") or settings.GANTRY_MODEL_DIRS[0])
    path = PurePosixPath(spec.model_ref)
    sub = str(path.relative_to(root)) if path.is_relative_to(root) else path.name
    if ".." in PurePosixPath(sub).parts:
        raise DriverError(f"model path {spec.model_ref} escapes the models volume")
    inside = f"{MODELS_MOUNT}/{path.name}"
    volume = {
        "name": "models",
        "persistentVolumeClaim": {"claimName": config["models_pvc"], "readOnly": True},
    }
    mount = {"name": "models", "mountPath": inside, "subPath": sub, "readOnly": True}
    return [volume], [mount], inside


def render_manifests(spec: ReplicaSpec, config: dict) -> tuple[dict, dict, dict]:
    """The Deployment, Service and Secret (the engine's key) of one replica, as Kubernetes
    API objects (dicts).

    GPUs: the pod asks for ``nvidia.com/gpu`` limits and NVIDIA's device plugin decides
    which devices of the node it gets (and isolates them); placement's indices are only
    Gantry's own accounting on this driver, the plugin does not take them.
    """
    namespace = config.get("namespace", "gantry")
    port = int(config.get("port", 8000))
    labels = {k.replace("gantry.", "gantry.io/"): v for k, v in spec.labels.items()}
    selector = {"gantry.io/replica": str(spec.replica_id)}
    volumes, mounts, model_path = _model_volume(spec, config)
    # The engine listens on the pod's own address (the cluster network), not on every
    # interface: Kubernetes expands $(POD_IP) from the downward API below.
    launch = engine_launch(spec, model_path=model_path, host="$(POD_IP)", port=port)
    key = engine_api_key(spec.replica_id)
    # The key stays in a Secret: the pod spec only names it (SGLang, which reads it from
    # its argv only, gets it through $(GANTRY_ENGINE_KEY) expansion).
    command = [f"$({KEY_ENV})" if a == key else a for a in launch.argv]
    from_secret = {"secretKeyRef": {"name": spec.name, "key": "api-key"}}
    env = [
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "GANTRY_REPLICA", "value": spec.name},
        {"name": "HOME", "value": POD_TMP},
        {"name": "HF_HOME", "value": f"{POD_TMP}/hf"},
        {"name": KEY_ENV, "valueFrom": from_secret},
        *({"name": name, "valueFrom": from_secret} for name in launch.env if name != "HF_TOKEN"),
        *(
            [
                {
                    "name": "HF_TOKEN",
                    "valueFrom": {"secretKeyRef": {"name": spec.name, "key": "hf-token"}},
                }
            ]
            if "HF_TOKEN" in launch.env
            else []
        ),
    ]
    # Requests and limits alike, so a replica cannot take its neighbours' CPU or memory.
    cpu, memory = str(config.get("cpu", "4")), str(config.get("memory", "16Gi"))
    resources: dict = {
        "requests": {"cpu": str(config.get("cpu_request", "1")), "memory": memory},
        "limits": {"cpu": cpu, "memory": memory},
    }
    node_selector = {}
    if spec.gpus and spec.gpu_type != "cpu":
        resources["limits"]["nvidia.com/gpu"] = str(spec.gpus)
        product = GPU_PRODUCTS.get(spec.gpu_type)
        if product:
            node_selector["nvidia.com/gpu.product"] = product
    node_selector.update(config.get("node_selector", {}))
    volumes.append({"name": "tmp", "emptyDir": {"sizeLimit": config.get("tmp_size", "4Gi")}})
    mounts.append({"name": "tmp", "mountPath": POD_TMP})
    if spec.engine != "llama.cpp":
        # vLLM and SGLang share tensors between their processes through /dev/shm.
        volumes.append({"name": "shm", "emptyDir": {"medium": "Memory"}})
        mounts.append({"name": "shm", "mountPath": POD_SHM})
    # Probes carry no credentials (a header would put the key in the spec): vLLM and
    # SGLang answer /health without one; llama-cpp-python's server has no such route, so
    # its port opening is the sign. The reconciler's own probe is the authenticated one.
    if spec.engine == "llama.cpp":
        probe: dict = {"tcpSocket": {"port": port}, "periodSeconds": 5}
    else:
        probe = {"httpGet": {"path": "/health", "port": port}, "periodSeconds": 5}
    container = {
        "name": "engine",
        "image": spec.image or default_image(spec.engine),
        "command": command,
        "ports": [{"containerPort": port, "name": "http"}],
        "resources": resources,
        "readinessProbe": {**probe, "failureThreshold": 3},
        "startupProbe": {**probe, "failureThreshold": 180},
        "env": env,
        "volumeMounts": mounts,
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "privileged": False,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    pod_spec: dict = {
        "containers": [container],
        "volumes": volumes,
        # The pod has no business with the cluster's API, nor with other services' names.
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": UID,
            "runAsGroup": UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }
    if node_selector:
        pod_spec["nodeSelector"] = node_selector
    if spec.gpus and spec.gpu_type != "cpu":
        pod_spec["tolerations"] = [
            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
        ]
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": spec.name, "namespace": namespace, "labels": labels},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": selector},
            "strategy": {"type": "Recreate"},
            "template": {"metadata": {"labels": labels}, "spec": pod_spec},
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": spec.name, "namespace": namespace, "labels": labels},
        "spec": {
            "selector": selector,
            "ports": [{"name": "http", "port": port, "targetPort": port}],
        },
    }
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": spec.name, "namespace": namespace, "labels": labels},
        "type": "Opaque",
        "stringData": {"api-key": key, **({"hf-token": spec.hub_token} if spec.hub_token else {})},
    }
    return deployment, service, secret


class KubernetesDriver(PoolDriver):
    @property
    def namespace(self) -> str:
        return self.config.get("namespace", "gantry")

    def _apis(self):
        from kubernetes import client, config
        from kubernetes.config.config_exception import ConfigException

        try:
            path = self.config.get("kubeconfig") or settings.KUBECONFIG
            if path:
                api_client = config.new_client_from_config(
                    config_file=path, context=self.config.get("context")
                )
            else:
                config.load_incluster_config()
                api_client = client.ApiClient()
        except (ConfigException, OSError) as exc:
            raise DriverUnavailable(f"no Kubernetes configuration: {exc}") from exc
        return client.AppsV1Api(api_client), client.CoreV1Api(api_client)

    def _call(self, fn, *args, **kwargs):
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            return fn(*args, **kwargs)
        except ApiException:
            raise
        except (HTTPError, OSError) as exc:
            raise DriverUnavailable(f"Kubernetes API unreachable: {exc}") from exc

    def url_for(self, name: str) -> str:
        domain = self.config.get("service_domain", "svc.cluster.local")
        return f"http://{name}.{self.namespace}.{domain}:{int(self.config.get('port', 8000))}"

    def start(self, spec: ReplicaSpec) -> Started:
        from kubernetes.client.exceptions import ApiException

        apps, core = self._apis()
        deployment, service, secret = render_manifests(spec, self.config)
        deployment["metadata"]["labels"]["gantry.io/pool"] = str(self.pool.pk)
        for create, body in (
            (core.create_namespaced_secret, secret),
            (apps.create_namespaced_deployment, deployment),
            (core.create_namespaced_service, service),
        ):
            try:
                self._call(create, self.namespace, body)
            except ApiException as exc:
                if exc.status != 409:  # 409: made by an earlier attempt; adopt it
                    raise DriverError(f"Kubernetes refused the replica: {exc.reason}") from exc
        return Started(handle=spec.name, url=self.url_for(spec.name))

    def status(self, handle: str) -> RuntimeStatus:
        from kubernetes.client.exceptions import ApiException

        apps, core = self._apis()
        try:
            self._call(apps.read_namespaced_deployment, handle, self.namespace)
        except ApiException as exc:
            if exc.status == 404:
                return RuntimeStatus("missing", "no such Deployment")
            raise DriverUnavailable(f"Kubernetes API error: {exc.reason}") from exc
        pods = self._call(
            core.list_namespaced_pod,
            self.namespace,
            label_selector=f"gantry.io/replica={handle.removeprefix('gantry-r')}",
        ).items
        for pod in pods:
            for cs in pod.status.container_statuses or []:
                waiting = cs.state.waiting if cs.state else None
                if waiting and waiting.reason in {
                    "CrashLoopBackOff",
                    "ErrImagePull",
                    "ImagePullBackOff",
                    "CreateContainerError",
                }:
                    return RuntimeStatus("exited", f"{waiting.reason}: {waiting.message or ''}")
            if pod.status.phase == "Failed":
                return RuntimeStatus("exited", f"pod failed: {pod.status.reason or ''}")
        return RuntimeStatus("running")

    def stop(self, handle: str) -> None:
        from kubernetes.client.exceptions import ApiException

        apps, core = self._apis()
        for delete in (
            apps.delete_namespaced_deployment,
            core.delete_namespaced_service,
            core.delete_namespaced_secret,
        ):
            try:
                self._call(delete, handle, self.namespace)
            except ApiException as exc:
                if exc.status != 404:
                    raise DriverError(f"Kubernetes refused to delete: {exc.reason}") from exc

    def list(self) -> list[RuntimeInfo]:
        apps, _core = self._apis()
        items = self._call(
            apps.list_namespaced_deployment,
            self.namespace,
            label_selector=f"gantry.io/replica,gantry.io/pool={self.pool.pk}",
        ).items
        return [
            RuntimeInfo(
                handle=d.metadata.name, replica_id=int(d.metadata.labels["gantry.io/replica"])
            )
            for d in items
        ]

    def logs(self, handle: str, tail: int = 200) -> str:
        _apps, core = self._apis()
        pods = self._call(
            core.list_namespaced_pod,
            self.namespace,
            label_selector=f"gantry.io/replica={handle.removeprefix('gantry-r')}",
        ).items
        if not pods:
            return ""
        return self._call(
            core.read_namespaced_pod_log,
            pods[0].metadata.name,
            self.namespace,
            tail_lines=tail,
        )

    def ping(self) -> None:
        apps, _core = self._apis()
        self._call(apps.list_namespaced_deployment, self.namespace, limit=1)
