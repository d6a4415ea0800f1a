"""Every workload and load kind, measured on a real llama.cpp server (the bench model),
straight to its replica; and the same seed gives the same requests."""

import pytest

from deployments.engine_auth import engine_api_key
from lab import specs
from lab.loadgen import prompts_for_point
from lab.runner import measure

SMALL = {"input_tokens": 16, "output_tokens": 8, "requests_per_point": 3, "warmup_requests": 0}


def run(deployment, workload: dict, load: dict, slo: dict | None = None):
    replica = deployment.replicas.get(status="running")
    w = specs.workload_parse({**SMALL, **workload})
    ld = specs.load_parse(load)
    return measure(
        base_url=replica.url,
        api_key=engine_api_key(replica.pk),
        model=deployment.name,
        workload=w,
        load=ld,
        slo=specs.slo_parse(slo or {}, load_kind=ld["kind"]),
    )


def test_workload_kinds_and_a_rate_sweep_on_llama_cpp(bench_deployment):
    jsonl = '{"prompt": "the water of the city", "max_tokens": 6}\n' + (
        '{"messages": [{"role": "user", "content": "name the road home"}]}\n'
    )
    for workload in (
        {"kind": "synthetic", "input_spread": 0.5, "output_spread": 0.5},
        {"kind": "shared_prefix", "prefix_tokens": 64, "prefixes": 2},
        {"kind": "multi_turn", "turns": 2},
        {"kind": "jsonl", "prompts": jsonl},
    ):
        [p] = run(bench_deployment, workload, {"concurrency": [2]})
        assert p.errors == 0 and p.output_tokens > 0, (workload, p.error_samples)
    points = run(bench_deployment, {}, {"kind": "rate", "rates": [2, 8]})
    assert [p.rate for p in points] == [2.0, 8.0] and all(p.concurrency is None for p in points)
    assert all(p.errors == 0 and p.requests == 3 for p in points)


def test_slo_search_finds_the_highest_concurrency_meeting_the_slo(bench_deployment):
    # A TTFT bound no request can meet: the search stops at concurrency 1, which fails.
    [p] = run(
        bench_deployment, {}, {"kind": "slo_search", "max_concurrency": 8}, {"ttft_p95_ms": 0.1}
    )
    assert p.concurrency == 1 and not p.meets_slo and p.goodput == 0
    # A bound every request meets: doubling up to the cap, every point passes.
    points = run(
        bench_deployment, {}, {"kind": "slo_search", "max_concurrency": 4}, {"e2e_p95_ms": 600_000}
    )
    assert [p.concurrency for p in points] == [1, 2, 4] and all(p.meets_slo for p in points)


@pytest.mark.parametrize("kind", ["synthetic", "shared_prefix", "multi_turn"])
def test_the_same_seed_gives_the_same_requests(kind):
    extra = {"shared_prefix": {"prefix_tokens": 8}, "multi_turn": {"turns": 3}}.get(kind, {})
    w = specs.workload_parse({**SMALL, "kind": kind, "input_spread": 0.5, "seed": 9, **extra})
    assert prompts_for_point(w, seed=5) == prompts_for_point(w, seed=5)
    assert prompts_for_point(w, seed=5) != prompts_for_point(w, seed=6)
