"""The `docker` driver: replicas are labelled containers on the pool's Docker hosts.

Each node of the pool is one Docker Engine (``docker_url`` in the node's or the pool's
config; the default is DOCKER_HOST). Containers use the host's network, so a replica
answers on the node's address at the port Gantry picked; GPUs are handed over with
device requests. A container's name is the replica's, so a retried start finds and
adopts what an interrupted one created instead of starting a second.
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
from deployments.engines import default_image, engine_command, model_file

CONTAINER_MODELS = "/models"
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
            return docker.DockerClient(base_url=url, timeout=60)
        except DockerException as exc:
            raise DriverUnavailable(f"Docker host {url} cannot be reached: {exc}") from exc

    def _errors(self):
        import docker.errors
        import requests

        return docker.errors, requests.exceptions.ConnectionError

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
        errors, conn_error = self._errors()
        for cfg in self._nodes_configs():
            client = self._client(cfg)
            try:
                return client.containers.get(handle)
            except errors.NotFound:
                continue
            except (conn_error, errors.DockerException) as exc:
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
        local = host in {"127.0.0.1", "localhost", "0.0.0.0"}
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

    def start(self, spec: ReplicaSpec) -> Started:
        errors, conn_error = self._errors()
        from docker.types import DeviceRequest

        client = self._client(spec.node_config)
        try:
            try:
                existing = client.containers.get(spec.name)
            except errors.NotFound:
                existing = None
            if existing is not None:
                if existing.status in {"running", "created", "restarting"}:
                    return Started(handle=spec.name, url=existing.labels.get("gantry.url", ""))
                existing.remove(force=True)
            image = spec.image or default_image(spec.engine)
            if not image:
                raise DriverError(f"no image configured for engine {spec.engine}")
            self._ensure_image(client, image)
            host = spec.node_address or "127.0.0.1"
            port = self._pick_port(client, host)
            volumes = {}
            model_path = spec.model_ref
            if spec.engine == "llama.cpp":
                path = model_file(spec.model_ref)
                volumes[str(Path(path).parent)] = {"bind": CONTAINER_MODELS, "mode": "ro"}
                model_path = f"{CONTAINER_MODELS}/{Path(path).name}"
            command = engine_command(
                spec.engine, model_path=model_path, port=port, host=host, args=spec.engine_args
            )
            url = f"http://{host}:{port}"
            labels = {
                **spec.labels,
                "gantry.pool": str(self.pool.pk),
                "gantry.port": str(port),
                "gantry.url": url,
            }
            if os.environ.get("GANTRY_INSTANCE"):
                labels[INSTANCE_LABEL] = os.environ["GANTRY_INSTANCE"]
            device_requests = []
            if spec.gpus and spec.gpu_type != "cpu":
                ids = spec.node_config.get("gpu_ids")
                device_requests = [
                    DeviceRequest(device_ids=ids, capabilities=[["gpu"]])
                    if ids
                    else DeviceRequest(count=spec.gpus, capabilities=[["gpu"]])
                ]
            client.containers.run(
                image,
                command=command,
                name=spec.name,
                labels=labels,
                detach=True,
                network_mode="host",
                volumes=volumes,
                device_requests=device_requests,
                environment={"GANTRY_REPLICA": spec.name},
            )
            return Started(handle=spec.name, url=url)
        except errors.ImageNotFound as exc:
            raise DriverError(
                f"image {spec.image or default_image(spec.engine)} is not on the Docker host"
            ) from exc
        except errors.APIError as exc:
            if exc.status_code == 409:  # a concurrent start created it: adopt
                container = client.containers.get(spec.name)
                return Started(handle=spec.name, url=container.labels.get("gantry.url", ""))
            raise DriverError(f"Docker refused to start the replica: {exc.explanation}") from exc
        except conn_error as exc:
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
        errors, conn_error = self._errors()
        found = []
        for cfg in self._nodes_configs():
            client = self._client(cfg)
            try:
                containers = client.containers.list(
                    filters={"label": ["gantry.replica", f"gantry.pool={self.pool.pk}"]}
                )
            except (conn_error, errors.DockerException) as exc:
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
        errors, conn_error = self._errors()
        for cfg in self._nodes_configs():
            try:
                self._client(cfg).ping()
            except (conn_error, errors.DockerException) as exc:
                raise DriverUnavailable(f"Docker host unreachable: {exc}") from exc
