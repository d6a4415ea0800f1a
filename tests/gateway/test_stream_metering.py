"""Every answer is metered, streamed or not, whatever the engine reports — on the real
llama.cpp engine, whose server never reports usage in a stream."""

import time

import openai
import pytest

from billing.models import UsageRecord
from tests.gateway.conftest import tokens, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

# Greedy decoding, the same seed: the engine generates the same tokens every time.
SAME = {"max_tokens": 12, "seed": 7, "temperature": 0, "logit_bias": {"2": -100}}


def ledger(deployment):
    return tokens(deployment, "input_tokens"), tokens(deployment, "output_tokens")


def metered_after(deployment, before, request):
    """What one request adds to the ledger (waiting for the meter to write it)."""
    request()
    assert wait_for(lambda: ledger(deployment) != before, timeout=30), "nothing metered"
    time.sleep(0.5)  # a second ledger write of the same request would land by now
    now = ledger(deployment)
    return now[0] - before[0], now[1] - before[1]


def sources(deployment):
    return set(
        UsageRecord.objects.filter(deployment_id=deployment.pk).values_list(
            "token_source", flat=True
        )
    )


def test_a_streamed_completion_meters_what_the_same_request_unstreamed_reports(
    gateway, running, org_a, api_client_for
):
    client = openai.OpenAI(base_url=gateway.base_url, api_key=api_client_for(org_a).raw_key)
    reported = {}

    def unstreamed():
        answer = client.completions.create(model="chat", prompt="Once upon a time", **SAME)
        reported["usage"] = answer.usage

    plain = metered_after(running, (0, 0), unstreamed)
    assert plain == (reported["usage"].prompt_tokens, reported["usage"].completion_tokens)
    assert sources(running) == {"engine"}

    def streamed():
        chunks = list(
            client.completions.create(model="chat", prompt="Once upon a time", stream=True, **SAME)
        )
        assert all(c.usage is None for c in chunks)  # llama.cpp reports none

    assert metered_after(running, ledger(running), streamed) == plain
    assert sources(running) == {"engine", "counted"}

    def aborted():  # one chunk read, then the client walks away
        stream = client.completions.create(
            model="chat", prompt="Once upon a time", stream=True, **SAME
        )
        next(iter(stream))
        stream.close()

    assert metered_after(running, ledger(running), aborted) == plain


def test_streamed_chat_is_metered_and_counts_against_the_keys_token_limit(
    gateway, running, org_a, api_client_for
):
    from portal.models import ApiKey
    from portal.tokens import api_key_digest

    if 60 - time.time() % 60 < 20:  # keep the requests below inside one minute window
        time.sleep(60 - time.time() % 60 + 0.5)
    messages = [{"role": "user", "content": "tell me a story"}]
    reference = openai.OpenAI(base_url=gateway.base_url, api_key=api_client_for(org_a).raw_key)
    answer = reference.chat.completions.create(model="chat", messages=messages, **SAME)
    assert wait_for(lambda: ledger(running)[1] == answer.usage.completion_tokens)

    # A key allowed a single token a minute: its first request goes (nothing spent yet).
    limited = api_client_for(org_a).raw_key
    ApiKey.objects.filter(digest=api_key_digest(limited)).update(tokens_per_minute=1)
    client = openai.OpenAI(base_url=gateway.base_url, api_key=limited, max_retries=0)

    def streamed():
        list(client.chat.completions.create(model="chat", messages=messages, stream=True, **SAME))

    gained = metered_after(running, ledger(running), streamed)
    assert gained[1] == answer.usage.completion_tokens  # every streamed token, counted
    # The prompt is counted by the engine's tokenizer, without the chat template's markers.
    assert 0 < gained[0] <= answer.usage.prompt_tokens
    # The streamed tokens used up the key's minute: the next request is refused.
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="chat", messages=messages, **SAME)


def test_usage_an_engine_reports_as_negative_is_counted_never_credited(
    gateway, upstream_route, org_a, api_client_for
):
    client = openai.OpenAI(base_url=gateway.base_url, api_key=api_client_for(org_a).raw_key)
    answer = client.chat.completions.create(
        model="streamer", messages=[{"role": "user", "content": "report negative usage"}]
    )
    assert answer.usage.completion_tokens == -7  # passed through as the engine sent it
    assert wait_for(lambda: tokens(upstream_route, "output_tokens") > 0)
    rows = UsageRecord.objects.filter(deployment_id=upstream_route.pk)
    assert all(r.quantity > 0 and r.amount_micros >= 0 for r in rows)
    assert {r.token_source for r in rows} == {"counted"}
