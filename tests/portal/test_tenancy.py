import re

import pytest
from django.urls import URLPattern, URLResolver, get_resolver, reverse

from tests.conftest import owner_of
from tests.tenancy import EXEMPT, MATRIX, snapshot

CASES = [(entry, method) for entry in MATRIX for method in entry.methods]


@pytest.mark.parametrize(("entry", "method"), CASES, ids=[f"{e.name}-{m}" for e, m in CASES])
def test_other_org_gets_404_and_changes_nothing(
    entry, method, org_a, org_b, web_client, api_client_for
):
    kwargs, obj = entry.make(org_b, owner_of(org_b))
    before = snapshot(obj)
    url = reverse(entry.name, kwargs=kwargs)
    if entry.api:
        client = api_client_for(org_a)
        data = {"role": "admin"} if method == "PATCH" else {}
        response = getattr(client, method.lower())(url, data, format="json")
    else:
        client = web_client(owner_of(org_a), org_a)
        response = getattr(client, method.lower())(url, {"role": "admin"})
    assert response.status_code == 404, (url, method, response.status_code)
    assert snapshot(obj) == before


def _walk(patterns, prefix=""):
    for p in patterns:
        if isinstance(p, URLResolver):
            ns = f"{p.namespace}:" if p.namespace else ""
            yield from ((prefix + ns + n, r) for n, r in _walk(p.url_patterns))
        elif isinstance(p, URLPattern) and p.name:
            yield prefix + p.name, str(p.pattern)


def test_every_url_with_an_object_in_its_path_is_in_the_tenancy_matrix():
    covered = {e.name for e in MATRIX} | set(EXEMPT)
    missing = []
    for name, route in _walk(get_resolver().url_patterns):
        if name.startswith("admin:"):
            continue  # Django's admin: staff only, across organizations by design
        if re.search(r"<[^>]+>|\(\?P<", route) and name not in covered:
            missing.append((name, route))
    assert not missing, f"add these URLs to tests/tenancy.py: {missing}"
