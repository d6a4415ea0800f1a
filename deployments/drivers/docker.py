"""The `docker` driver: replicas are labelled containers on the pool's Docker hosts.

Each node of the pool is one Docker Engine (``docker_url`` in the node's or the pool's
config; the default is DOCKER_HOST). Containers use the host's network, so a replica
answers on the node's address at the port Gantry picked, and only with its own API key;
GPUs are handed over with device requests naming exactly the indices placement gave the
replica. Containers run locked down: a non-root user, no capabilities, no privilege
escalation, a read-only root filesystem, memory and process limits, and only the
replica's own model file or folder mounted, read-only. A container's name is the
replica's, so a retried start finds and adopts what an interrupted one created instead
of starting a second.

Pool (or node) config: ``docker_url``, ``port_range``, ``gpu_ids`` (device ids by node
index), ``pull``, and the lock-down's knobs ``user`` (default ``65534:65534``),
``memory_limit`` (``16g``), ``pids_limit`` (1024), ``shm_size``, ``tmp_size`` (``4g``),
``read_only_rootfs`` (true).
"""

import os
import socket
from pathlib import Path

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
from deployments.drivers.launch import container_command, engine_launch
from deployments.engines import default_image, model_file

CONTAINER_MODELS = "/models"
# The container's own tmpfs (its $HOME under a read-only root), not a folder of the host.
CONTAINER_TMP = "/tmp"  # noqa: S108
# The Gantry instance (a `make run`, a test session) that started a container, as its
# label: the same marker the local driver gives its engines (see drivers/local.py).
INSTANCE_LABEL = "gantry.instance"


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


class DockerDriver(PoolDriver):
    def _client(self, node_config: dict | None = None):
        import docker
        from docker.errors import DockerException

        url = (node_config or {}).get("docker_url") or self.config.get("docker_url")
        url = url or settings.DOCKER_HOST
        try:
            # Creating a container copies the whole image on the vfs storage driver, which
            # can take minutes on a busy host; "timeout" (seconds) in the pool config.
            return docker.DockerClient(base_url=url, timeout=int(self.config.get("timeout", 300)))
        except DockerException as exc:
            raise DriverUnavailable(f"Docker host {url} cannot be reached: {exc}") from exc

    def _errors(self):
        import docker.errors
        import requests

        # A host that does not answer in time is unavailable (retry later), like one that
        # cannot be reached: a start that timed out half-way is adopted by the retry.
        return docker.errors, (requests.exceptions.ConnectionError, requests.exceptions.Timeout)

    def _nodes_configs(self) -> list[dict]:
        configs = [n.config or {} for n in self.pool.nodes.all()]
        # Several nodes may share one engine (the default); ask each engine once.
        seen, unique = set(), []
        for cfg in configs or [{}]:
            key = cfg.get("docker_url") or self.config.get("docker_url") or settings.DOCKER_HOST
            if key not in seen:
                seen.add(key)
                unique.append(cfg)
        return unique

    def _find(self, handle: str):
        errors, unreachable = self._errors()
        for cfg in self._nodes_configs():
            client = self._client(cfg)
            try:
                return client.containers.get(handle)
            except errors.NotFound:
                continue
            except (*unreachable, errors.DockerException) as exc:
                raise DriverUnavailable(f"Docker host unreachable: {exc}") from exc
        return None

    def _pick_port(self, client, host: str) -> int:
        low, high = self.config.get("port_range", [30000, 30999])
        used = set()
        for c in client.containers.list(all=True, filters={"label": "gantry.port"}):
            try:
                used.add(int(c.labels.get("gantry.port", "0")))
            except ValueError:
                continue
        local = host in {"127.0.0.1", "localhost", "0.0.0.0"}  # noqa: S104 - compared, not bound
        for port in range(low, high + 1):
            if port not in used and (not local or _port_free(host, port)):
                return port
        raise DriverError(f"no free port in {low}-{high} on {host}")

    def _ensure_image(self, client, image: str) -> None:
        """The image must be on the host; pull it unless the pool says not to
        (``"pull": false`` for hosts that only run locally built or preloaded images)."""
        errors, _ = self._errors()
        try:
            client.images.get(image)
            return
        except errors.ImageNotFound:
            if not self.config.get("pull", True):
                raise DriverError(
                    f"image {image} is not on the Docker host (this pool does not pull)"
                ) from None
        try:
            client.images.pull(image)
        except errors.APIError as exc:
            raise DriverError(
                f"image {image} is not on the Docker host and could not be pulled: "
                f"{exc.explanation or exc}"
            ) from exc

    def _model_mount(self, spec: ReplicaSpec) -> tuple[dict, str]:
        """(volumes, model path inside the container): only the replica's own model file
        (llama.cpp) or folder (vLLM, SGLang), read-only — never the folder around it,
        where other organizations' weights live. A hub repo id mounts nothing."""
        if spec.engine == "llama.cpp":
            path = Path(model_file(spec.model_ref))
        elif spec.model_ref.startswith("/"):
            path = Path(spec.model_ref)
        else:
            return {}, spec.model_ref
        inside = f"{CONTAINER_MODELS}/{path.name}"
        return {str(path): {"bind": inside, "mode": "ro"}}, inside

    def _device_requests(self, spec: ReplicaSpec) -> list:
        """Exactly the GPUs placement gave the replica (its indices on the node), mapped
        through the node's ``gpu_ids`` where the operator lists the devices by id."""
        from docker.types import DeviceRequest

        if not spec.gpus or spec.gpu_type == "cpu":
            return []
        indices = list(spec.gpu_indices)
        if len(indices) != spec.gpus:
            raise DriverError(
                f"replica holds {spec.gpus} GPUs but placement recorded indices {indices}"
            )
        ids = spec.node_config.get("gpu_ids") or self.config.get("gpu_ids")
        try:
            devices = [str(ids[i]) if ids else str(i) for i in indices]
        except (IndexError, KeyError, TypeError) as exc:
            raise DriverError(f"node config gpu_ids has no device for index {exc}") from exc
        return [DeviceRequest(driver="nvidia", device_ids=devices, capabilities=[["gpu"]])]

    def _run_options(self, spec: ReplicaSpec, image_entrypoint, host: str, port: int) -> dict:
        """Everything but the image: the command, its secret, and the lock-down."""
        volumes, model_path = self._model_mount(spec)
        launch = engine_launch(spec, model_path=model_path, host=host, port=port)
        url = f"http://{host}:{port}"
        cfg = self.config
        return {
            "command": container_command(launch, spec.engine, image_entrypoint),
            "name": spec.name,
            "labels": {
                **spec.labels,
                "gantry.pool": str(self.pool.pk),
                "gantry.port": str(port),
                "gantry.url": url,
                **(
                    {INSTANCE_LABEL: os.environ["GANTRY_INSTANCE"]}
                    if os.environ.get("GANTRY_INSTANCE")
                    else {}
                ),
            },
            # Host networking: the engine listens on the node's internal address only
            # (``--host``), which no tenant flag can change (see launch.py).
            "network_mode": "host",
            "volumes": volumes,
            "device_requests": self._device_requests(spec),
            "environment": {
                "GANTRY_REPLICA": spec.name,
                # A writable home on the tmpfs: the root filesystem is read-only and the
                # engines keep caches (compiled kernels, the hub's) under $HOME.
                "HOME": CONTAINER_TMP,
                "HF_HOME": f"{CONTAINER_TMP}/hf",
                **launch.env,
            },
            # No root, no way back to it, no capabilities, bounded memory and processes.
            # 65534 is "nobody" in Debian and Ubuntu images (the engines' are one or the
            # other); a pool whose image needs another uid says so with "user".
            "user": str(cfg.get("user", "65534:65534")),
            "security_opt": ["no-new-privileges:true"],
            "cap_drop": ["ALL"],
            "read_only": bool(cfg.get("read_only_rootfs", True)),
            "tmpfs": {CONTAINER_TMP: f"rw,nosuid,nodev,size={cfg.get('tmp_size', '4g')}"},
            "mem_limit": str(cfg.get("memory_limit", "16g")),
            "pids_limit": int(cfg.get("pids_limit", 1024)),
            # vLLM and SGLang share tensors between their processes through /dev/shm.
            "shm_size": str(cfg.get("shm_size", "64m" if spec.engine == "llama.cpp" else "8g")),
        }

    def create(self, spec: ReplicaSpec):
        """Create (not start) the replica's container; return it. ``start`` runs it."""
        errors, _ = self._errors()
        client = self._client(spec.node_config)
        image = spec.image or default_image(spec.engine)
        if not image:
            raise DriverError(f"no image configured for engine {spec.engine}")
        self._ensure_image(client, image)
        try:
            entrypoint = client.images.get(image).attrs.get("Config", {}).get("Entrypoint")
        except errors.ImageNotFound as exc:
            raise DriverError(f"image {image} is not on the Docker host") from exc
        host = spec.node_address or "127.0.0.1"
        port = self._pick_port(client, host)
        return client.containers.create(
            image, **self._run_options(spec, entrypoint, host, port), detach=True
        )

    def start(self, spec: ReplicaSpec) -> Started:
        errors, unreachable = self._errors()
        client = self._client(spec.node_config)
        try:
            try:
                container = client.containers.get(spec.name)
            except errors.NotFound:
                container = None
            if container is not None and container.status in {"running", "restarting"}:
                return Started(handle=spec.name, url=container.labels.get("gantry.url", ""))
            if container is not None and container.status != "created":
                container.remove(force=True)
                container = None
            if container is None:  # "created": an earlier attempt stopped before starting it
                container = self.create(spec)
            try:
                container.start()
            except errors.APIError as exc:
                # A container that cannot start (no such device, bad mount) must not stay
                # behind as "created", where a retry would adopt it as if it ran.
                container.remove(force=True)
                raise DriverError(
                    f"Docker could not start the replica: {exc.explanation or exc}"
                ) from exc
            return Started(handle=spec.name, url=container.labels.get("gantry.url", ""))
        except errors.ImageNotFound as exc:
            raise DriverError(
                f"image {spec.image or default_image(spec.engine)} is not on the Docker host"
            ) from exc
        except errors.APIError as exc:
            if exc.status_code == 409:  # a concurrent start created it: adopt
                container = client.containers.get(spec.name)
                return Started(handle=spec.name, url=container.labels.get("gantry.url", ""))
            raise DriverError(f"Docker refused to start the replica: {exc.explanation}") from exc
        except unreachable as exc:
            raise DriverUnavailable(f"Docker host unreachable: {exc}") from exc

    def status(self, handle: str) -> RuntimeStatus:
        container = self._find(handle)
        if container is None:
            return RuntimeStatus("missing", "no such container")
        if container.status in {"running", "created", "restarting"}:
            return RuntimeStatus("running")
        code = container.attrs.get("State", {}).get("ExitCode")
        tail = container.logs(tail=2).decode("utf-8", "replace").strip().splitlines()
        detail = f"container exited with code {code}" + (f": {tail[-1]}" if tail else "")
        return RuntimeStatus("exited", detail)

    def stop(self, handle: str) -> None:
        errors, _ = self._errors()
        container = self._find(handle)
        if container is None:
            return
        try:
            if container.status == "running":
                container.stop(timeout=10)
            container.remove(force=True)
        except errors.NotFound:
            pass

    def list(self) -> list[RuntimeInfo]:
        errors, unreachable = self._errors()
        found = []
        for cfg in self._nodes_configs():
            client = self._client(cfg)
            try:
                containers = client.containers.list(
                    filters={"label": ["gantry.replica", f"gantry.pool={self.pool.pk}"]}
                )
            except (*unreachable, errors.DockerException) as exc:
                raise DriverUnavailable(f"Docker host unreachable: {exc}") from exc
            for c in containers:
                try:
                    found.append(
                        RuntimeInfo(handle=c.name, replica_id=int(c.labels["gantry.replica"]))
                    )
                except (KeyError, ValueError):
                    continue
        return found

    def logs(self, handle: str, tail: int = 200) -> str:
        container = self._find(handle)
        if container is None:
            return ""
        return container.logs(tail=tail).decode("utf-8", "replace")

    def ping(self) -> None:
        errors, unreachable = self._errors()
        for cfg in self._nodes_configs():
            try:
                self._client(cfg).ping()
            except (*unreachable, errors.DockerException) as exc:
                raise DriverUnavailable(f"Docker host unreachable: {exc}") from exc
