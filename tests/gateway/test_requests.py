"""What the gateway accepts from a client, tried as an attacker would, over HTTP."""

import http.client
import json
import urllib.error
import urllib.request

import pytest

from tests.gateway.conftest import tokens, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def post(gateway, key, body, headers=None):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(
        f"{gateway.base_url}/chat/completions",
        data=data,
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
        | (headers or {}),
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


HI = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "streamer", "messages": HI, "stream": "false"}, "stream"),
        ({"model": "streamer", "messages": HI, "stream": "true"}, "stream"),
        ({"model": "streamer", "messages": HI, "stream": 0}, "stream"),
        ({"model": "streamer", "messages": HI, "stream": {}}, "stream"),
        ({"messages": HI}, "model"),
        ({"model": "", "messages": HI}, "model"),
        ({"model": "   ", "messages": HI}, "model"),
        ({"model": 7, "messages": HI}, "model"),
        ({"model": ["streamer"], "messages": HI}, "model"),
        ({"model": "s" * 10_000, "messages": HI}, "model"),
        ({"model": "streamer", "messages": HI, "max_tokens": "8"}, "max_tokens"),
        ({"model": "streamer", "messages": HI, "max_tokens": 0}, "max_tokens"),
        ({"model": "streamer", "messages": HI, "max_tokens": -1}, "max_tokens"),
        ({"model": "streamer", "messages": HI, "max_tokens": 2.5}, "max_tokens"),
        ({"model": "streamer", "messages": HI, "max_tokens": True}, "max_tokens"),
        ({"model": "streamer", "messages": HI, "max_tokens": 10**30}, "max_tokens"),
        (
            {"model": "streamer", "messages": HI, "max_completion_tokens": -3},
            "max_completion_tokens",
        ),
        ({"model": "streamer", "messages": HI, "stream_options": "x"}, "stream_options"),
        ({"model": "streamer", "messages": HI, "stream_options": []}, "stream_options"),
        (
            {"model": "streamer", "messages": HI, "stream_options": {"include_usage": "no"}},
            "stream_options",
        ),
    ],
)
def test_fields_of_the_wrong_type_get_400_naming_the_field_and_reach_no_engine(
    gateway, upstream_route, org_a, api_client_for, body, param
):
    status, answer = post(gateway, api_client_for(org_a).raw_key, body)
    assert status == 400
    assert answer["error"]["param"] == param and answer["error"]["type"] == "invalid_request_error"
    assert f"`{param}" in answer["error"]["message"]
    assert upstream_route.upstream.received == []


@pytest.mark.parametrize("raw", [b"[1, 2]", b'"chat"', b"null", b"{", b"\xff\xfe"])
def test_a_body_that_is_not_a_json_object_gets_400(
    gateway, upstream_route, org_a, api_client_for, raw
):
    status, answer = post(gateway, api_client_for(org_a).raw_key, raw)
    assert status == 400 and answer["error"]["code"] == "invalid_json"
    assert upstream_route.upstream.received == []


def test_stream_null_means_not_streamed_and_is_metered(
    gateway, upstream_route, org_a, api_client_for
):
    status, answer = post(
        gateway,
        api_client_for(org_a).raw_key,
        {"model": "streamer", "messages": HI, "stream": None, "max_tokens": 5},
    )
    assert status == 200 and answer["usage"]["completion_tokens"] == 5
    assert wait_for(lambda: tokens(upstream_route, "output_tokens") == 5)


def test_a_body_over_the_limit_gets_413_before_it_is_read(
    gateway, upstream_route, org_a, api_client_for, settings
):
    settings.GATEWAY_MAX_BODY_BYTES = 2000
    key = api_client_for(org_a).raw_key
    big = {"model": "streamer", "messages": [{"role": "user", "content": "x" * 3000}]}
    status, answer = post(gateway, key, big)
    assert status == 413 and answer["error"]["code"] == "request_too_large"
    assert "2000 bytes" in answer["error"]["message"]
    # A body that does not say its length (chunked) is cut off once it passes the limit.
    host, port = gateway.base_url.split("//")[1].split("/")[0].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.putrequest("POST", "/v1/chat/completions")
    conn.putheader("Authorization", f"Bearer {key}")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders()
    for _ in range(5):
        piece = b" " * 1000
        conn.send(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
    conn.send(b"0\r\n\r\n")
    r = conn.getresponse()
    assert r.status == 413 and json.loads(r.read())["error"]["code"] == "request_too_large"
    conn.close()
    assert upstream_route.upstream.received == []
    # Under the limit, the same client is served.
    small = {"model": "streamer", "messages": HI}
    assert post(gateway, key, small)[0] == 200


def test_a_bearer_that_is_not_a_key_is_refused_before_the_body_is_read(gateway, upstream_route):
    status, answer = post(gateway, "not-a-key", {"model": "streamer", "messages": HI})
    assert status == 401 and answer["error"]["code"] == "invalid_api_key"
    assert upstream_route.upstream.received == []


def test_an_engine_answer_over_the_limit_is_cut_off_and_the_prompt_still_metered(
    gateway, upstream_route, org_a, api_client_for, settings
):
    settings.GATEWAY_MAX_ANSWER_BYTES = 100  # the stand-in's answers are a few hundred
    key = api_client_for(org_a).raw_key
    status, answer = post(gateway, key, {"model": "streamer", "messages": HI})
    assert status == 502 and answer["error"]["code"] == "bad_gateway"
    assert wait_for(lambda: tokens(upstream_route, "input_tokens") > 0)
    # A stream passes through event by event, but an event over the limit ends it.
    request = urllib.request.Request(
        f"{gateway.base_url}/chat/completions",
        data=json.dumps({"model": "streamer", "messages": HI, "stream": True}).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"},
    )
    with urllib.request.urlopen(request, timeout=30) as r:
        received = r.read()
    assert b"[DONE]" not in received and len(received) < 400


@pytest.mark.parametrize(
    "answer",
    [
        b"NOT HTTP\r\n\r\n",  # garbled before a status line
        b'HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n{"choices": [',  # cut off mid-body
    ],
)
def test_an_engine_that_garbles_or_breaks_off_its_answer_gets_the_client_a_502(
    gateway, upstream_route, org_a, api_client_for, answer
):
    """A broken or hostile engine: the client gets a 502 in OpenAI's shape, not a 500 or a
    hang, and the gateway serves the next request."""
    import socket
    import threading

    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    port = listener.getsockname()[1]
    done = threading.Event()

    def serve():
        with listener:
            while not done.is_set():
                try:
                    conn, _ = listener.accept()
                except TimeoutError:
                    continue
                with conn:
                    conn.recv(65536)
                    conn.sendall(answer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    replica = upstream_route.replicas.get()
    good_url = replica.url
    type(replica).objects.filter(pk=replica.pk).update(url=f"http://127.0.0.1:{port}")
    key = api_client_for(org_a).raw_key
    try:
        status, body = post(gateway, key, {"model": "streamer", "messages": HI})
        assert status == 502 and body["error"]["code"] == "bad_gateway"
        assert "engine" in body["error"]["message"]
    finally:
        done.set()
        thread.join(timeout=10)
    type(replica).objects.filter(pk=replica.pk).update(url=good_url)
    gateway.gateway.router.forget(org_a.pk)
    assert post(gateway, key, {"model": "streamer", "messages": HI})[0] == 200
