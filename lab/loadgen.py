"""The requests of a load point, and the client that sends them.

A small asyncio client on aiohttp (already the gateway's client): docs/lab-load-generator.md
says why the Lab drives its own instead of AIPerf, GuideLLM or inference-perf, and
bench/lab_loadgen.py shows it agrees with AIPerf on the same server.

Synthetic prompts are built from a fixed list of short, common English words: each is one
token in the usual BPE and SentencePiece vocabularies (and exactly one in the bench model's),
so a prompt of N words is about N tokens; the engine's ``usage.prompt_tokens`` tells the
true count afterwards.
"""

import json
import random
import time
from dataclasses import dataclass

import aiohttp

from deployments.bench_model import COMMON_WORDS

WORDS = COMMON_WORDS


@dataclass
class RequestResult:
    ok: bool
    ttft_ms: float = 0.0
    itl_ms: float = 0.0
    e2e_ms: float = 0.0
    output_tokens: int = 0
    prompt_tokens: int = 0
    error: str = ""


@dataclass
class Job:
    """One request, or one conversation (``turns`` > 1): each turn appends the answer and a
    new user message, so later turns carry the whole history."""

    prompt: str = ""
    messages: list | None = None
    max_tokens: int = 16
    turns: int = 1
    follow_ups: list | None = None


def _text(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(max(1, n)))


def _spread(rng: random.Random, mean: int, spread: float) -> int:
    if not spread:
        return mean
    return max(1, round(rng.uniform(mean * (1 - spread), mean * (1 + spread))))


def prompts_for_point(workload: dict, *, seed: int) -> list[Job]:
    """The point's requests, the same for the same (workload, seed): a run can be replayed."""
    rng = random.Random(seed)  # noqa: S311 - replayable prompts, not secrets
    n = workload["requests_per_point"]
    kind = workload["kind"]
    jobs: list[Job] = []
    if kind == "jsonl":
        prompts = workload["prompts"]
        for i in range(n):
            p = prompts[i % len(prompts)]
            jobs.append(
                Job(
                    prompt=p.get("prompt", ""),
                    messages=p.get("messages"),
                    max_tokens=p.get("max_tokens", workload["output_tokens"]),
                )
            )
        return jobs
    # Shared prefixes are drawn from their own stream so every point reuses the same ones.
    prefix_rng = random.Random(workload.get("seed") or 0)  # noqa: S311
    prefixes = [_text(prefix_rng, workload["prefix_tokens"]) for _ in range(workload["prefixes"])]
    for _ in range(n):
        body = _text(rng, _spread(rng, workload["input_tokens"], workload["input_spread"]))
        out = _spread(rng, workload["output_tokens"], workload["output_spread"])
        if kind == "shared_prefix":
            jobs.append(Job(prompt=f"{rng.choice(prefixes)}\n{body}", max_tokens=out))
        elif kind == "multi_turn":
            follow = [
                _text(rng, _spread(rng, workload["input_tokens"], workload["input_spread"]))
                for _ in range(workload["turns"] - 1)
            ]
            jobs.append(
                Job(
                    messages=[{"role": "user", "content": body}],
                    max_tokens=out,
                    turns=workload["turns"],
                    follow_ups=follow,
                )
            )
        else:
            jobs.append(Job(prompt=body, max_tokens=out))
    return jobs


class Session:
    """One HTTP connection pool to the endpoint for the whole run."""

    def __init__(self, *, base_url: str, api_key: str, model: str):
        self.base_url = base_url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.model = model
        self.http: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> "Session":
        self.http = aiohttp.ClientSession(
            headers=self.headers, connector=aiohttp.TCPConnector(limit=0)
        )
        return self

    async def __aexit__(self, *exc) -> None:
        if self.http:
            await self.http.close()

    async def run_job(self, job: Job, *, timeout_s: float) -> list[RequestResult]:
        if job.messages is None:
            return [
                await self.stream(prompt=job.prompt, max_tokens=job.max_tokens, timeout_s=timeout_s)
            ]
        messages = list(job.messages)
        results = []
        for turn in range(job.turns):
            r, answer = await self.stream_chat(
                messages, max_tokens=job.max_tokens, timeout_s=timeout_s
            )
            results.append(r)
            if not r.ok or turn == job.turns - 1:
                break
            messages += [
                {"role": "assistant", "content": answer},
                {"role": "user", "content": (job.follow_ups or [""])[turn]},
            ]
        return results

    async def stream(self, *, prompt: str, max_tokens: int, timeout_s: float) -> RequestResult:
        body = {"model": self.model, "prompt": prompt, "max_tokens": max_tokens}
        r, _ = await self._stream("/v1/completions", body, timeout_s=timeout_s)
        return r

    async def stream_chat(
        self, messages: list, *, max_tokens: int, timeout_s: float
    ) -> tuple[RequestResult, str]:
        body = {"model": self.model, "messages": messages, "max_tokens": max_tokens}
        return await self._stream("/v1/chat/completions", body, timeout_s=timeout_s)

    async def _stream(
        self, path: str, body: dict, *, timeout_s: float
    ) -> tuple[RequestResult, str]:
        if self.http is None:
            raise RuntimeError("use the Session in an async with block")
        body = {**body, "stream": True, "stream_options": {"include_usage": True}}
        start = time.perf_counter()
        token_times: list[float] = []
        chunks = 0
        usage_out = usage_in = None
        finished_at = None  # when a choice ended (finish_reason): the answer is complete
        text: list[str] = []
        try:
            async with self.http.post(
                self.base_url + path,
                json=body,
                timeout=aiohttp.ClientTimeout(total=timeout_s),
            ) as resp:
                if resp.status != 200:
                    detail = (await resp.text())[:200]
                    return RequestResult(ok=False, error=f"HTTP {resp.status}: {detail}"), ""
                async for raw in resp.content:
                    line = raw.decode("utf-8", "replace").strip()
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    event = json.loads(data)
                    if event.get("usage"):
                        usage_out = event["usage"].get("completion_tokens")
                        usage_in = event["usage"].get("prompt_tokens")
                    for choice in event.get("choices") or []:
                        piece = choice.get("text")
                        if piece is None:
                            piece = (choice.get("delta") or {}).get("content")
                        if piece:
                            token_times.append(time.perf_counter())
                            chunks += 1
                            text.append(piece)
                        if choice.get("finish_reason") is not None and finished_at is None:
                            finished_at = time.perf_counter()
        except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
            return RequestResult(ok=False, error=f"{type(exc).__name__}: {exc}"[:200]), ""
        end = time.perf_counter()
        if not token_times:
            if finished_at is None:
                return RequestResult(ok=False, error="the stream ended without an answer"), ""
            # A complete answer of no text: the model's first token ended it (an end-of-
            # sequence token — common for the random-weight demo models). The engine did
            # its work correctly; its first (and last) event is its time to first token.
            return (
                RequestResult(
                    ok=True,
                    ttft_ms=(finished_at - start) * 1000,
                    e2e_ms=(end - start) * 1000,
                    output_tokens=usage_out or 0,
                    prompt_tokens=usage_in or 0,
                ),
                "",
            )
        out = usage_out if usage_out is not None else chunks
        # ITL: the mean gap between content events after the first, per output token, so an
        # engine that batches several tokens in one event is not credited with zero gaps.
        itl = (end - token_times[0]) / (out - 1) if out > 1 else 0.0
        return (
            RequestResult(
                ok=True,
                ttft_ms=(token_times[0] - start) * 1000,
                itl_ms=itl * 1000,
                e2e_ms=(end - start) * 1000,
                output_tokens=out,
                prompt_tokens=usage_in or 0,
            ),
            "".join(text),
        )
