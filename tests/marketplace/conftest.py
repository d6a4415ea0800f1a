import pytest

from marketplace.services import catalog_load


@pytest.fixture
def catalog(db):
    catalog_load()


from tests.deployments.conftest import local_pool  # noqa: E402, F401 - shared fixture
