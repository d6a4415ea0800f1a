"""Path converters that match only values an object id can take.

A URL segment that cannot be an id (``abc``, ``null,null``, ``1e9``, a number past
PostgreSQL's bigint) must not reach a query: it answers 404 at the resolver, the same as
an id that names nothing.
"""

from django.urls import register_converter

# Ids are bigint primary keys from 1 up; 18 digits stay below 2**63 - 1, and no sequence
# here gets near 10**18, so the bound costs nothing real and keeps every query in range.
ID_PATTERN = r"[1-9][0-9]{0,17}"


class IdConverter:
    regex = ID_PATTERN

    def to_python(self, value: str) -> int:
        return int(value)

    def to_url(self, value) -> str:
        return str(int(value))


register_converter(IdConverter, "id")
