"""The search itself: the space from the flag schema, proposals, pruning inputs, the stop
rules and the Pareto front. No database, no engine."""

import pytest
from django.core.exceptions import ValidationError

from deployments.flags import schema_for, validate_engine_args
from lab import search
from lab.search import Objective, TrialRecord


def _fake_tps(p: dict) -> float:
    """A throughput surface with an interaction (threads × batch) and a flat direction."""
    batch = {128: 1.0, 256: 2.0, 512: 3.0, 1024: 2.6, 2048: 2.0}[p["n_batch"]]
    return (
        10.0 * p["n_threads"] * batch / 3
        + (2.0 if p["flash_attn"] else 0.0)
        - (1.5 if p["type_k"] == 2 else 0.0)
        + (0.3 if p["cache"] else 0.0)
    )


def test_space_holds_only_tunable_flags_each_value_accepted_by_its_flag():
    space = search.search_space("llama.cpp", cpus=4)
    by_key = schema_for("llama.cpp").by_key()
    assert {"n_threads", "n_batch", "n_ubatch", "flash_attn", "type_k", "type_v"} <= set(space)
    assert "n_gpu_layers" not in space and "offload_kqv" not in space  # CPU pool
    for key, values in space.items():
        assert by_key[key].tunable
        for v in values:
            assert by_key[key].parse(v) == v
    assert space["n_threads"] == [1, 2, 4]
    # Every configuration renders to arguments the deployment's own validation accepts.
    config = search.grid(space)[7]
    args = search.launch_args("llama.cpp", config)
    assert validate_engine_args("llama.cpp", args) == args


def test_gpu_pools_add_gpu_flags_and_other_engines_have_spaces_too():
    assert "n_gpu_layers" in search.search_space("llama.cpp", cpu=False)
    assert "max_num_seqs" in search.search_space("vllm", cpu=False)
    assert "schedule_policy" in search.search_space("sglang", cpu=False)


@pytest.mark.parametrize(
    ("narrow", "message"),
    [
        ({"--host": ["0.0.0.0"]}, "is not a tunable flag"),
        ({"--n_ctx": [512]}, "is not a tunable flag"),
        ({"--n_thr": [2]}, "is not a tunable flag"),  # no prefixes
        ({"--n_batch": []}, "give a list of 1 to"),
        ({"--n_batch": "512"}, "give a list of 1 to"),
        ({"--n_batch": [0]}, "a whole number from 1 to 8192"),
        ({"--flash_attn": ["yes"]}, "true or false"),
        (["--n_batch"], "Give an object"),
        ({}, "Give an object"),
    ],
)
def test_narrowing_the_space_is_checked_by_the_flag_schema(narrow, message):
    with pytest.raises(ValidationError) as exc:
        search.search_space("llama.cpp", narrow=narrow)
    assert message in str(exc.value.message_dict["space"])


def test_narrowed_space_replaces_the_ladder_and_spellings_are_exact():
    space = search.search_space("llama.cpp", cpus=2, narrow={"--n_batch": [256, "512", 256]})
    assert space["n_batch"] == [256, 512]


def test_proposals_never_repeat_and_never_break_engine_rules():
    space = search.search_space(
        "llama.cpp", cpus=2, narrow={"--n_batch": [128, 512], "--n_ubatch": [128, 256, 512]}
    )
    history: list[TrialRecord] = []
    for _ in range(4):  # 6 configurations, 2 with n_ubatch > n_batch
        _study, _trial, params = search.propose(
            engine="llama.cpp",
            objective=Objective.MAX_THROUGHPUT,
            space=space,
            history=history,
            seed=3,
        )
        assert search.invalid_reason("llama.cpp", params) == ""
        assert params not in [h.params for h in history]
        value = params["n_batch"] / 100 + params["n_ubatch"] / 1000
        history.append(TrialRecord(params=params, state="complete", value=value))
    with pytest.raises(ValidationError, match="No valid configuration is left"):
        search.propose(
            engine="llama.cpp", objective=Objective.MAX_THROUGHPUT, space=space, history=history
        )


def test_warm_start_configs_are_tried_first():
    space = search.search_space("llama.cpp", cpus=2)
    warm = {k: v[-1] for k, v in space.items()} | {"type_k": 1, "type_v": 1}
    _s, _t, params = search.propose(
        engine="llama.cpp",
        objective=Objective.MAX_THROUGHPUT,
        space=space,
        history=[],
        warm=[warm],
        seed=1,
    )
    assert params == warm


def test_the_search_gets_near_the_grid_best_with_a_fraction_of_the_trials():
    space = search.search_space(
        "llama.cpp",
        narrow={
            "--n_threads": [1, 2, 4],
            "--n_batch": [128, 256, 512, 1024, 2048],
            "--flash_attn": [False, True],
            "--type_k": [1, 8, 2],
            "--cache": [False, True],
        },
    )
    valid = [p for p in search.grid(space) if not search.invalid_reason("llama.cpp", p)]
    grid_best = max(_fake_tps(p) for p in valid)
    budget = int(len(valid) * 0.3)
    history: list[TrialRecord] = []
    for _ in range(budget):
        _s, _t, params = search.propose(
            engine="llama.cpp",
            objective=Objective.MAX_THROUGHPUT,
            space=space,
            history=history,
            seed=11,
        )
        history.append(TrialRecord(params=params, state="complete", value=_fake_tps(params)))
    best = max(h.value for h in history)
    assert best >= 0.95 * grid_best, (best, grid_best, budget, len(valid))


def _point(c, tps, ttft, cost=None):
    return {
        "concurrency": c,
        "output_tokens_per_s": tps,
        "ttft_ms": {"p50": ttft / 2, "p95": ttft, "p99": ttft},
        "itl_ms": {"p50": 10, "p95": 20, "p99": 30},
        "e2e_ms": {"p50": 100, "p95": 200 * c, "p99": 300 * c},
        "error_rate": 0.0,
        "cost_per_1m_output_tokens": cost,
    }


def test_objectives_take_the_best_point_that_meets_the_slo():
    points = [_point(1, 10, 100, 5.0), _point(2, 18, 300, 3.0), _point(4, 30, 900, 2.0)]
    slo = {"ttft_p95_ms": 500, "error_rate": 0.01}
    assert search.trial_value(Objective.MAX_THROUGHPUT, points, slo, gpus=2) == 9.0
    assert search.trial_value(Objective.MIN_COST, points, slo, gpus=1) == 3.0
    assert search.trial_value(Objective.MIN_LATENCY, points, slo, gpus=1) == 800
    assert search.trial_value(Objective.MAX_THROUGHPUT, points, {"ttft_p95_ms": 50}, gpus=1) is None


def test_convergence_and_the_pareto_front():
    assert search.converged(
        Objective.MAX_THROUGHPUT, [5, 10, 10.01, 9, 10.02], patience=3, tol=0.01
    )
    assert not search.converged(Objective.MAX_THROUGHPUT, [5, 10, 12, 9, 10], patience=3, tol=0.01)
    assert search.converged(Objective.MIN_COST, [5, 3, 3.5, 4, None], patience=3, tol=0.01)
    front = search.pareto_front(
        [
            {"tps_per_gpu": 10, "tps_per_user": 1},
            {"tps_per_gpu": 5, "tps_per_user": 5},
            {"tps_per_gpu": 4, "tps_per_user": 4},  # dominated by the one above
            {"tps_per_gpu": 1, "tps_per_user": 9},
        ]
    )
    assert [(p["tps_per_gpu"], p["tps_per_user"]) for p in front] == [(10, 1), (5, 5), (1, 9)]
