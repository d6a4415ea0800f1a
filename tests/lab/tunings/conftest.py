"""Fixtures and helpers the tuning tests share."""

import pytest

from deployments.engines import DEMO_MODEL_REF
from lab.models import RunStatus, TrialState, Tuning, TuningTrial
from marketplace.services import catalog_load
from tests.deployments.conftest import (  # noqa: F401 - shared fixtures
    _isolated_var,
    local_pool,
    replica_var,
)

DEMO_SLUG = "gantry-tiny-random-llama"


@pytest.fixture
def catalog(db):
    catalog_load()


def tuning_body(**over) -> dict:
    body = {
        "model": DEMO_SLUG,
        "gpu_types": ["cpu"],
        "objective": "max_throughput_under_slo",
        "slo": {"ttft_p95_ms": 60_000},
        "budget": {"trials": 2},
        "workload": {"input_tokens": 16, "output_tokens": 8, "requests_per_point": 3},
        "load": {"kind": "concurrency", "concurrency": [1, 2]},
        "space": {"--n_threads": [1, 2], "--n_batch": [64, 256], "--flash_attn": [False]},
    }
    body.update(over)
    return {k: v for k, v in body.items() if v is not None}


def finished_tuning(org, user, *, values=(12.0, 20.0)) -> Tuning:
    """A succeeded tuning with measured trials, as the run would leave it (no engine)."""
    from lab.tunings import leaderboard_record
    from marketplace.models import CatalogModel

    model = CatalogModel.objects.get(slug=DEMO_SLUG)
    t = Tuning.objects.create(
        organization=org,
        created_by=user,
        catalog_model=model,
        model_label=model.name,
        model_ref=DEMO_MODEL_REF,
        family=model.family,
        engine="llama.cpp",
        engine_version="0.3.36",
        gpu_types=["cpu"],
        regions={"cpu": ["local"]},
        objective="max_throughput_under_slo",
        slo={"ttft_p95_ms": 1000, "itl_p95_ms": None, "e2e_p95_ms": None, "error_rate": 0.01},
        budget={"trials": len(values)},
        workload={"kind": "synthetic", "input_tokens": 16, "output_tokens": 8},
        load={"kind": "concurrency", "concurrency": [1, 2]},
        space={"n_threads": [1, 2]},
        base_args=["--n_ctx", "512"],
        status=RunStatus.SUCCEEDED,
    )
    best = None
    for i, v in enumerate(values, start=1):
        points = [
            {
                "concurrency": c,
                "output_tokens_per_s": v * c / 2,
                "output_tokens_per_s_per_user": v / 2,
                "ttft_ms": {"p50": 50, "p95": 80 * c, "p99": 90 * c},
                "itl_ms": {"p50": 5, "p95": 9, "p99": 10},
                "e2e_ms": {"p50": 100, "p95": 150, "p99": 170},
                "error_rate": 0.0,
                "cost_per_1m_output_tokens": round(1e6 / (v * c / 2 * 3600) * 0.05, 4),
            }
            for c in (1, 2)
        ]
        trial = TuningTrial.objects.create(
            tuning=t,
            number=i,
            gpu_type="cpu",
            params={"n_threads": i},
            launch=["--n_ctx", "512", "--n_threads", str(i)],
            state=TrialState.COMPLETE,
            value=v,
            points=points,
        )
        if best is None or v > best.value:
            best = trial
    t.best_trial = best
    t.save(update_fields=["best_trial"])
    leaderboard_record(t)
    return t
