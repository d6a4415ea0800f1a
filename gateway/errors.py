"""Errors in OpenAI's shape (`{"error": {message, type, param, code}}`), so the official
clients raise their usual exceptions. Messages name what is wrong, never a key or a secret.
"""

from starlette.responses import JSONResponse


def error(
    status: int,
    message: str,
    type_: str,
    code: str,
    *,
    param: str | None = None,
    headers: dict | None = None,
) -> JSONResponse:
    return JSONResponse(
        {"error": {"message": message, "type": type_, "param": param, "code": code}},
        status_code=status,
        headers=headers,
    )


def invalid_key() -> JSONResponse:
    return error(401, "Invalid or revoked API key.", "invalid_request_error", "invalid_api_key")


def invalid_json() -> JSONResponse:
    return error(400, "The body must be JSON.", "invalid_request_error", "invalid_json")


def spend_limit(reason: str) -> JSONResponse:
    return error(429, reason, "insufficient_quota", "spend_limit", headers={"Retry-After": "3600"})


def rate_limited(retry_after_s: int, *, playground: bool = False) -> JSONResponse:
    who = "your playground requests" if playground else "this API key"
    return error(
        429,
        f"Rate limit reached for {who}; retry in {retry_after_s} s.",
        "rate_limit_exceeded",
        "rate_limit_exceeded",
        headers={"Retry-After": str(retry_after_s)},
    )


def model_not_found(name: str) -> JSONResponse:
    return error(
        404,
        f"The model `{name}` does not exist.",
        "invalid_request_error",
        "model_not_found",
    )


def wrong_deployment(name: str) -> JSONResponse:
    return error(
        403,
        f"This playground token is not for `{name}`; mint one on that deployment's page.",
        "permission_error",
        "wrong_deployment",
    )


def model_waking(name: str) -> JSONResponse:
    return error(
        503,
        f"`{name}` is waking up from zero replicas; retry shortly.",
        "server_error",
        "model_waking",
        headers={"Retry-After": "10"},
    )


def model_stopped(name: str) -> JSONResponse:
    return error(
        503,
        f"`{name}` is stopped; its owners can start it again.",
        "server_error",
        "model_stopped",
    )


def model_not_ready(name: str, status: str) -> JSONResponse:
    return error(
        503,
        f"`{name}` has no running replica yet ({status}).",
        "server_error",
        "model_not_ready",
        headers={"Retry-After": "5"},
    )


def model_unreachable(name: str) -> JSONResponse:
    return error(
        503,
        f"No replica of `{name}` could be reached.",
        "server_error",
        "model_unreachable",
        headers={"Retry-After": "2"},
    )


def answer_too_large() -> JSONResponse:
    return error(
        502,
        "The engine's answer is larger than the gateway accepts.",
        "server_error",
        "bad_gateway",
    )


def answer_broken() -> JSONResponse:
    return error(
        502,
        "The engine broke off its answer; it can be asked again.",
        "server_error",
        "bad_gateway",
    )
