from deployments.drivers.base import (
    DriverError,
    DriverUnavailable,
    PoolDriver,
    ReplicaSpec,
    RuntimeInfo,
    RuntimeStatus,
    Started,
)


def driver_for(pool) -> PoolDriver:
    if pool.driver == "local":
        from deployments.drivers.local import LocalDriver

        return LocalDriver(pool)
    if pool.driver == "docker":
        from deployments.drivers.docker import DockerDriver

        return DockerDriver(pool)
    if pool.driver == "kubernetes":
        from deployments.drivers.kubernetes import KubernetesDriver

        return KubernetesDriver(pool)
    raise DriverError(f"unknown driver {pool.driver!r}")


__all__ = [
    "DriverError",
    "DriverUnavailable",
    "PoolDriver",
    "ReplicaSpec",
    "RuntimeInfo",
    "RuntimeStatus",
    "Started",
    "driver_for",
]
