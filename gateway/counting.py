"""Token counts for answers whose engine reported none (llama.cpp's server never reports
usage in a stream, whatever `stream_options` says).

- Completion tokens are counted as the stream passes: llama.cpp sends one event per
  generated token, so the events that carry text (and are not the closing event with a
  `finish_reason`) are the tokens. Re-tokenizing the finished text would not do: the
  tokens a model generates are not the ones its tokenizer would cut the same text into
  (measured on the demo model: 13–16 tokens back for 20 generated).
- Prompt tokens are counted by the engine's own tokenizer (`/extras/tokenize` on
  llama-cpp-python's server), after the answer is complete, off the request path. For
  `/v1/completions` that is exactly what the engine counted. For chat the gateway cannot
  see the model's chat template, so the messages' text is tokenized without it: the
  template's own markers are not counted.

Either way the ledger says the counts were counted, not reported (`source`).
"""

import logging

import aiohttp
import orjson

from gateway.routes import Target

log = logging.getLogger("gateway.counting")

TOKENIZE_PATH = "/extras/tokenize"


def read_event(line: bytes) -> tuple[dict | None, int]:
    """One server-sent event line: the `usage` object it carries, if any, and how many
    generated tokens it carries (per choice, 0 or 1)."""
    if not line.startswith(b"data:") or line.startswith(b"data: [DONE]"):
        return None, 0
    try:
        event = orjson.loads(line[5:])
    except ValueError:
        return None, 0
    if not isinstance(event, dict):
        return None, 0
    usage = event.get("usage") if isinstance(event.get("usage"), dict) else None
    n = 0
    choices = event.get("choices")
    for choice in choices if isinstance(choices, list) else []:
        if not isinstance(choice, dict) or choice.get("finish_reason") is not None:
            continue
        delta = choice.get("delta")
        if "text" in choice or (isinstance(delta, dict) and delta.get("content") is not None):
            n += 1
    return usage or None, n


def prompt_text(body: dict) -> str | int:
    """The prompt as text to tokenize, or as a count already known (token-id prompts)."""
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list):
        if all(isinstance(t, int) for t in prompt):
            return len(prompt)
        return "".join(p for p in prompt if isinstance(p, str))
    parts = []
    for message in body.get("messages") or []:
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts += [
                p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)
            ]
    return "\n".join(parts)


def answer_text(answer: dict) -> str:
    texts = []
    for choice in answer.get("choices") or []:
        if isinstance(choice, dict):
            message = choice.get("message") if isinstance(choice.get("message"), dict) else {}
            text = choice.get("text", message.get("content"))
            if isinstance(text, str):
                texts.append(text)
    return "".join(texts)


def estimate(text: str) -> int:
    """For an engine without a tokenizer endpoint: about four bytes of text a token."""
    return -(-len(text.encode()) // 4)


async def tokenize(session: aiohttp.ClientSession, target: Target, text: str) -> int | None:
    """How many tokens the engine's tokenizer makes of `text` — with the start-of-text
    token it adds to every prompt, as the engine counts a prompt — or None when the engine
    has no tokenizer endpoint or does not answer."""
    headers = {"content-type": "application/json"}
    if target.secret:
        headers["authorization"] = f"Bearer {target.secret}"
    try:
        async with session.post(
            f"{target.url}{TOKENIZE_PATH}", json={"input": text}, headers=headers
        ) as r:
            if r.status != 200:
                return None
            tokens = (await r.json()).get("tokens")
            return len(tokens) if isinstance(tokens, list) else None
    except (aiohttp.ClientError, TimeoutError, ValueError, AttributeError) as exc:
        log.warning("could not count tokens on replica %s: %s", target.replica_id, exc)
        return None


async def count_prompt(session: aiohttp.ClientSession, target: Target, body: dict) -> int:
    prompt = prompt_text(body)
    if isinstance(prompt, int):
        return prompt
    counted = await tokenize(session, target, prompt)
    return estimate(prompt) if counted is None else counted


async def count_completion(session: aiohttp.ClientSession, target: Target, text: str) -> int:
    """Tokens of a finished answer's text (for non-streamed answers without usage)."""
    if not text:
        return 0
    whole, empty = await tokenize(session, target, text), await tokenize(session, target, "")
    if whole is None or empty is None:
        return estimate(text)
    # The tokens the tokenizer adds to any text (start-of-text) are not the answer's.
    return max(whole - empty, 0)
