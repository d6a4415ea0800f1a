"""The `kubernetes` driver: a replica is a Deployment (one pod) plus a Service.

GPUs are requested as ``nvidia.com/gpu`` limits and steered to the right hardware with a
node selector on the GPU product label that NVIDIA's GPU feature discovery sets. Pool
config: ``namespace``, ``kubeconfig`` / ``context`` (or in-cluster), ``node_selector``
(merged over the default), ``models_pvc`` (a volume holding model files),
``service_domain`` (default ``svc.cluster.local``) and ``port`` (default 8000).
"""

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
from deployments.engines import default_image, engine_command

# Values of the `nvidia.com/gpu.product` node label for each GPU type.
GPU_PRODUCTS = {
    "b200-192gb": "NVIDIA-B200",
    "h200-141gb": "NVIDIA-H200",
    "h100-80gb": "NVIDIA-H100-80GB-HBM3",
    "a100-80gb": "NVIDIA-A100-SXM4-80GB",
    "l40s-48gb": "NVIDIA-L40S",
}
MODELS_MOUNT = "/models"


def render_manifests(spec: ReplicaSpec, config: dict) -> tuple[dict, dict]:
    """The Deployment and Service for one replica, as Kubernetes API objects (dicts)."""
    namespace = config.get("namespace", "gantry")
    port = int(config.get("port", 8000))
    labels = {k.replace("gantry.", "gantry.io/"): v for k, v in spec.labels.items()}
    selector = {"gantry.io/replica": str(spec.replica_id)}
    model_path = spec.model_ref
    volumes, mounts = [], []
    if config.get("models_pvc"):
        volumes.append(
            {
                "name": "models",
                "persistentVolumeClaim": {"claimName": config["models_pvc"], "readOnly": True},
            }
        )
        mounts.append({"name": "models", "mountPath": MODELS_MOUNT, "readOnly": True})
        if spec.engine == "llama.cpp":
            model_path = f"{MODELS_MOUNT}/{spec.model_ref.rsplit('/', 1)[-1]}"
    command = engine_command(
        spec.engine, model_path=model_path, port=port, host="0.0.0.0", args=spec.engine_args
    )
    resources: dict = {"requests": {"cpu": "1", "memory": "2Gi"}}
    node_selector = {}
    if spec.gpus and spec.gpu_type != "cpu":
        resources["limits"] = {"nvidia.com/gpu": str(spec.gpus)}
        product = GPU_PRODUCTS.get(spec.gpu_type)
        if product:
            node_selector["nvidia.com/gpu.product"] = product
    node_selector.update(config.get("node_selector", {}))
    probe = {"httpGet": {"path": "/v1/models", "port": port}, "periodSeconds": 5}
    container = {
        "name": "engine",
        "image": spec.image or default_image(spec.engine),
        "command": command,
        "ports": [{"containerPort": port, "name": "http"}],
        "resources": resources,
        "readinessProbe": {**probe, "failureThreshold": 3},
        "startupProbe": {**probe, "failureThreshold": 180},
        "env": [{"name": "GANTRY_REPLICA", "value": spec.name}],
        "volumeMounts": mounts,
    }
    pod_spec: dict = {"containers": [container], "volumes": volumes}
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
    return deployment, service


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
        deployment, service = render_manifests(spec, self.config)
        deployment["metadata"]["labels"]["gantry.io/pool"] = str(self.pool.pk)
        for create, body in (
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
        for delete in (apps.delete_namespaced_deployment, core.delete_namespaced_service):
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
