"""Property-based fuzzing of the whole REST API against its own OpenAPI document.

schemathesis generates requests for every operation of ``/api/schema/`` and sends them
to a live test server, once with an API key and once with a browser session. Any 5xx, or
any answer whose status, content type or body the document does not describe, fails.
Generation is derandomized, so a run is repeatable, and small enough for two cores.
"""

import uuid
from collections import Counter

import pytest
import requests
import schemathesis
from django.test import Client
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from portal.services import api_key_create
from tests.conftest import owner_of

pytestmark = pytest.mark.django_db(transaction=True)

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
EXAMPLES_PER_OPERATION = 6


@pytest.fixture
def fuzz_env(settings, org_a):
    """Tasks a fuzzed request enqueues go to a queue of their own, dropped afterwards, and
    nothing may reach the Hugging Face Hub (a closed local port stands in for it)."""
    from portal.celery import app

    settings.HF_ENDPOINT = "http://127.0.0.1:9"
    queue = f"fuzz-{uuid.uuid4().hex[:10]}"
    old_queue = app.conf.task_default_queue
    app.conf.task_default_queue = queue
    for attr in ("queues", "default_queue", "router"):
        app.amqp.__dict__.pop(attr, None)
    try:
        yield org_a
    finally:
        app.conf.task_default_queue = old_queue
        for attr in ("queues", "default_queue", "router"):
            app.amqp.__dict__.pop(attr, None)
        with app.connection_for_write() as connection:
            # Redis drops the queue's keys; a queue no task reached has none, and that is fine.
            connection.default_channel.queue_delete(queue)


def fuzz(
    base_url: str, *, credentials, cookies: dict, drop_authorization: bool
) -> tuple[list[str], Counter]:
    """Every operation's first failure (if any), and how many answers of each status class
    came back, so a run that never got past authentication cannot pass unnoticed."""
    schema = schemathesis.openapi.from_url(f"{base_url}/api/schema/?format=json")
    http = requests.Session()
    failures: list[str] = []
    answers: Counter = Counter()
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) > 20, "the schema lost its operations"
    for operation in operations:

        @hypothesis_settings(
            max_examples=EXAMPLES_PER_OPERATION,
            derandomize=True,
            database=None,
            deadline=None,
            # No shrinking: the first failing example is reported as it is, quickly.
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy())
        def run(case):
            if drop_authorization and case.headers:
                case.headers.pop("Authorization", None)
            response = case.call(
                base_url=base_url, session=http, headers=credentials(), cookies=cookies
            )
            answers[f"{response.status_code // 100}xx"] += 1
            answers[response.status_code] += 1
            case.validate_response(response, checks=CHECKS)

        try:
            run()
        except Exception as exc:  # every operation's failure is collected, then reported
            failures.append(f"{operation.label}: {type(exc).__name__}: {str(exc)[:1500]}")
    # Keep-alive holds a server thread (and its database connection) open until closed.
    http.close()
    return failures, answers


def test_api_never_fails_and_matches_its_schema_with_an_api_key(live_server, fuzz_env):
    owner = owner_of(fuzz_env)

    def fresh_key() -> dict:
        # A fresh key for each request: a fuzzed DELETE /keys/{id} may revoke the last one.
        _key, raw = api_key_create(organization=fuzz_env, user=owner, name="fuzz")
        return {"Authorization": f"Bearer {raw}"}

    failures, answers = fuzz(
        live_server.url,
        credentials=fresh_key,
        cookies={},
        drop_authorization=False,
    )
    assert not failures, "\n\n".join(failures)
    assert answers["2xx"] > 50 and answers["4xx"] > 50 and answers[401] == 0, answers


def test_api_never_fails_and_matches_its_schema_with_a_session(live_server, fuzz_env):
    client = Client()
    client.force_login(owner_of(fuzz_env))
    session_id = client.cookies["sessionid"].value
    # The session's CSRF token, the way a page hands it to htmx.
    csrf = requests.get(f"{live_server.url}/accounts/login/", timeout=30).cookies["csrftoken"]
    failures, answers = fuzz(
        live_server.url,
        credentials=lambda: {"X-CSRFToken": csrf},
        cookies={"sessionid": session_id, "csrftoken": csrf},
        drop_authorization=True,
    )
    assert not failures, "\n\n".join(failures)
    assert answers["2xx"] > 50 and answers["4xx"] > 50 and answers[401] == 0, answers
