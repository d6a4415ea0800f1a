"""What the gateway reads from a request body, checked before anything reaches an engine.

The body is read with a bound (GATEWAY_MAX_BODY_BYTES): a declared length over it is
refused before reading, and an undeclared (chunked) body is refused as soon as it passes
the bound, so an oversized body is never held whole. Then every field the gateway itself
acts on has its JSON type checked, because the gateway and the engine must read it the
same way: `"stream": "false"` is a string a gateway would call true and an engine false —
unmetered tokens. Fields only the engine reads are the engine's to check.
"""

import orjson
from django.conf import settings
from starlette.requests import Request


class Invalid(Exception):
    def __init__(self, status: int, message: str, param: str | None, code: str):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


MAX_MODEL_NAME = 256


def max_body_bytes() -> int:
    return int(getattr(settings, "GATEWAY_MAX_BODY_BYTES", 4 * 1024 * 1024))


def too_large(limit: int) -> Invalid:
    return Invalid(413, f"The request body is over {limit} bytes.", None, "request_too_large")


async def read_body(request: Request) -> bytes:
    limit = max_body_bytes()
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large(limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse(raw: bytes) -> dict:
    try:
        body = orjson.loads(raw)
    except ValueError:
        raise Invalid(400, "The body must be JSON.", None, "invalid_json") from None
    if not isinstance(body, dict):
        raise Invalid(400, "The body must be a JSON object.", None, "invalid_json")
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise Invalid(400, "`model` must be a non-empty string.", "model", "invalid_type")
    if len(model) > MAX_MODEL_NAME:
        raise Invalid(
            400, f"`model` is longer than {MAX_MODEL_NAME} characters.", "model", "invalid_value"
        )
    # null is what OpenAI's own API accepts for "not given"; anything else must be a bool.
    if body.get("stream") is not None and not isinstance(body["stream"], bool):
        raise Invalid(400, "`stream` must be true or false.", "stream", "invalid_type")
    options = body.get("stream_options")
    if options is not None:
        if not isinstance(options, dict):
            raise Invalid(
                400, "`stream_options` must be an object.", "stream_options", "invalid_type"
            )
        if options.get("include_usage") is not None and not isinstance(
            options["include_usage"], bool
        ):
            raise Invalid(
                400,
                "`stream_options.include_usage` must be true or false.",
                "stream_options",
                "invalid_type",
            )
    top = int(getattr(settings, "GATEWAY_MAX_TOKENS", 1_000_000))
    for field in ("max_tokens", "max_completion_tokens"):
        value = body.get(field)
        if value is None:
            continue
        if not _is_int(value) or not 1 <= value <= top:
            raise Invalid(
                400, f"`{field}` must be a whole number from 1 to {top}.", field, "invalid_value"
            )
    return body
