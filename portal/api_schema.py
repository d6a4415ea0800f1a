"""The OpenAPI document names the error bodies every operation may answer.

drf-spectacular documents what a view returns on success; the errors come from DRF's
exception handler and ``portal.api_errors`` for every operation alike, so this hook adds
them once, as shared components, instead of repeating them on each view.
"""

ERROR = {
    "type": "object",
    "description": "An error that is not about one field.",
    "properties": {"detail": {"type": "string"}},
    "required": ["detail"],
}
SERVER_ERROR = {
    "type": "object",
    "description": "An unexpected failure; the request id is also in the server's log.",
    "properties": {"detail": {"type": "string"}, "request_id": {"type": "string"}},
    "required": ["detail", "request_id"],
}
VALIDATION_ERROR = {
    "description": (
        "Bad input: each field that was refused, with its messages (nested for nested "
        "fields); `detail` or `non_field_errors` for a rule across fields. A rule that names "
        "no field at all answers a list of messages."
    ),
    "anyOf": [
        {"type": "object", "additionalProperties": {}},
        {"type": "array", "items": {"type": "string"}},
    ],
}

# status → (component, description)
ERROR_RESPONSES = {
    "400": ("ValidationError", "Bad input, per field."),
    "401": ("Error", "No credentials, or an unknown or revoked API key."),
    "403": ("Error", "Signed in, but not allowed to do this in this organization."),
    "404": ("Error", "No such object in this organization (or no such URL)."),
    "405": ("Error", "Method not allowed here; the Allow header lists those that are."),
    "413": ("Error", "The request body is too large."),
    "415": ("Error", "Unsupported body type: send JSON (uploads: multipart/form-data)."),
    "429": ("Error", "Too many requests; the Retry-After header says when to try again."),
    "500": ("ServerError", "An unexpected failure, with the request id to quote."),
}
METHODS = {"get", "put", "post", "patch", "delete", "head", "options", "trace"}


def add_error_responses(result, generator, request, public):
    schemas = result.setdefault("components", {}).setdefault("schemas", {})
    schemas.setdefault("Error", ERROR)
    schemas.setdefault("ServerError", SERVER_ERROR)
    schemas.setdefault("ValidationError", VALIDATION_ERROR)
    for path_item in result.get("paths", {}).values():
        for method, operation in path_item.items():
            if method not in METHODS:
                continue
            responses = operation.setdefault("responses", {})
            for code, (component, description) in ERROR_RESPONSES.items():
                responses.setdefault(
                    code,
                    {
                        "description": description,
                        "content": {
                            "application/json": {
                                "schema": {"$ref": f"#/components/schemas/{component}"}
                            }
                        },
                    },
                )
    return result
