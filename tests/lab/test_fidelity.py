"""The runner's figures agree with an outside observer of the same run: a recording proxy
between the runner and a real llama.cpp server (the bench model) times and counts every
streamed answer where it passes."""

import pytest

from deployments.engine_auth import engine_api_key
from lab import specs
from lab.fidelity import RecordingProxy
from lab.runner import measure

TOLERANCE = 0.10


@pytest.mark.parametrize("concurrency", [1, 3])
def test_ttft_and_output_tokens_per_s_agree_with_an_independent_client(
    bench_deployment, concurrency
):
    replica = bench_deployment.replicas.get(status="running")
    workload = specs.workload_parse(
        {"input_tokens": 48, "output_tokens": 24, "requests_per_point": 6, "warmup_requests": 0}
    )
    load = specs.load_parse({"concurrency": [concurrency]})
    with RecordingProxy(replica.url) as outside:
        [point] = measure(
            base_url=outside.url,
            api_key=engine_api_key(replica.pk),
            model=bench_deployment.name,
            workload=workload,
            load=load,
            slo=specs.slo_parse({}),
        )
    assert point.errors == 0 and len(outside.seen) == 6
    ttft_ratio = point.ttft_ms["p50"] / outside.ttft_p50_ms()
    tps_ratio = point.output_tokens_per_s / outside.output_tokens_per_s()
    assert abs(ttft_ratio - 1) <= TOLERANCE, (point.ttft_ms, outside.ttft_ms())
    assert abs(tps_ratio - 1) <= TOLERANCE, (
        point.output_tokens_per_s,
        outside.output_tokens_per_s(),
    )
    # Both saw the same answers: every token the runner counted passed the proxy.
    assert point.output_tokens == sum(s.events for s in outside.seen)
