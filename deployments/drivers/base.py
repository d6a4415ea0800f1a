"""The pool driver interface: start, status, stop, list, logs — one per pool kind."""

from dataclasses import dataclass, field
from typing import Literal


class DriverError(Exception):
    """A runtime could not be started or handled; the replica fails with this message."""


class DriverUnavailable(DriverError):
    """The pool's backend (Docker host, cluster) cannot be reached right now; retry."""


@dataclass(frozen=True)
class ReplicaSpec:
    replica_id: int
    deployment_id: int
    organization: str
    deployment_name: str
    engine: str
    image: str
    model_ref: str
    engine_args: tuple[str, ...]
    gpus: int
    gpu_type: str
    node_name: str
    node_address: str
    node_config: dict = field(default_factory=dict)
    # Which of the node's GPUs are the replica's (placement's indices, 0-based).
    gpu_indices: tuple[int, ...] = ()
    # The hub token of an engine that downloads its weights itself (HF_TOKEN in its
    # environment, never its argv); kept out of repr so it never reaches a log.
    hub_token: str = field(default="", repr=False)

    @property
    def name(self) -> str:
        return f"gantry-r{self.replica_id}"

    @property
    def labels(self) -> dict[str, str]:
        return {
            "gantry.replica": str(self.replica_id),
            "gantry.deployment": str(self.deployment_id),
            "gantry.org": self.organization,
        }


@dataclass(frozen=True)
class Started:
    handle: str
    url: str


@dataclass(frozen=True)
class RuntimeStatus:
    state: Literal["running", "exited", "missing"]
    detail: str = ""


@dataclass(frozen=True)
class RuntimeInfo:
    handle: str
    replica_id: int
    node_name: str = ""


class PoolDriver:
    """Drivers are cheap to build; one is made per pool when needed."""

    def __init__(self, pool):
        self.pool = pool
        self.config = dict(pool.config or {})

    def start(self, spec: ReplicaSpec) -> Started:  # pragma: no cover - interface
        raise NotImplementedError

    def status(self, handle: str) -> RuntimeStatus:  # pragma: no cover - interface
        raise NotImplementedError

    def stop(self, handle: str) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def list(self) -> list[RuntimeInfo]:  # pragma: no cover - interface
        raise NotImplementedError

    def logs(self, handle: str, tail: int = 200) -> str:  # pragma: no cover - interface
        raise NotImplementedError

    def ping(self) -> None:
        """Raise DriverUnavailable when the backend cannot be reached."""
