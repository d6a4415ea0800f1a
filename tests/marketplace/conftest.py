import pytest

from marketplace.services import catalog_load


@pytest.fixture
def catalog(db):
    catalog_load()


from tests.deployments.conftest import (  # noqa: E402, F401 - shared fixtures
    _isolated_var,
    local_pool,
    replica_var,
)
