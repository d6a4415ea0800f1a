from tests.deployments.conftest import (  # noqa: F401 - shared fixtures
    _isolated_var,
    local_pool,
    replica_var,
)
