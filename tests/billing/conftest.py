from tests.deployments.conftest import local_pool  # noqa: F401 - shared fixture
