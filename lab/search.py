"""The serving-config search: which engine flags a tuning varies, what it optimises, and
the Optuna study that proposes the next trial.

No database and no network here: a tuning's trials are passed in as plain records and the
study is rebuilt from them for every proposal (``propose``). A worker killed between two
trials, or a task run twice, therefore proposes from exactly what was recorded — there is
no in-memory study to lose.

Search space: the engine's flags marked ``tunable`` in ``deployments.flags``, each with a
short ladder of candidate values (powers of two inside the flag's range, both booleans,
the choices that matter) rather than the flag's whole range: ``--n_batch`` accepts 1–8192,
but nobody gains from trying 4711. A tuning may narrow any ladder to values of its own,
checked by the flag's own parser.
"""

import math
import os
import random
import warnings
from dataclasses import dataclass, field
from typing import Literal

import optuna
from django.core.exceptions import ValidationError
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.trial import TrialState

from deployments.flags import Flag, render_args, schema_for

optuna.logging.set_verbosity(optuna.logging.WARNING)
# Multivariate TPE is marked experimental; it models flags that act together (threads ×
# batch), which is the point here.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


class Objective:
    MAX_THROUGHPUT = "max_throughput_under_slo"
    MIN_COST = "min_cost_per_1m_under_slo"
    MIN_LATENCY = "min_latency_at_load"

    ALL = (MAX_THROUGHPUT, MIN_COST, MIN_LATENCY)
    UNITS = {
        MAX_THROUGHPUT: "output tokens/s per GPU",
        MIN_COST: "per 1M output tokens",
        MIN_LATENCY: "ms E2E p95",
    }

    @staticmethod
    def direction(objective: str) -> Literal["maximize", "minimize"]:
        return "maximize" if objective == Objective.MAX_THROUGHPUT else "minimize"


# The SLO a point must meet: the benchmark's own keys (lab.specs), all optional.
SLO_KEYS = ("ttft_p95_ms", "itl_p95_ms", "e2e_p95_ms", "error_rate")

# Llama.cpp quantized V caches need flash attention; the engine refuses to start otherwise.
_F16_TYPES = {0, 1, 30}

# Ladders used where a tuning names none. GPU-only flags drop out on CPU pools.
_GPU_ONLY = {"n_gpu_layers", "offload_kqv", "enforce_eager", "disable_cuda_graph"}
_GPU_ONLY |= {"cuda_graph_max_bs", "gpu_memory_utilization", "mem_fraction_static"}
_LADDERS: dict[str, dict[str, list]] = {
    "llama.cpp": {
        "n_batch": [128, 256, 512, 1024, 2048],
        "n_ubatch": [64, 128, 256, 512],
        "flash_attn": [False, True],
        "type_k": [1, 8, 2],
        "type_v": [1, 8, 2],
        "cache": [False, True],
        "n_gpu_layers": [-1],
        "offload_kqv": [True, False],
    },
    "vllm": {
        "max_num_seqs": [32, 64, 128, 256, 512],
        "max_num_batched_tokens": [2048, 4096, 8192, 16384],
        "gpu_memory_utilization": [0.85, 0.9, 0.95],
        "kv_cache_dtype": ["auto", "fp8"],
        "enable_prefix_caching": [True, False],
        "enable_chunked_prefill": [True, False],
        "enforce_eager": [False],
    },
    "sglang": {
        "mem_fraction_static": [0.8, 0.85, 0.9],
        "max_running_requests": [64, 128, 256, 512],
        "chunked_prefill_size": [2048, 4096, 8192],
        "max_prefill_tokens": [8192, 16384],
        "schedule_policy": ["lpm", "fcfs"],
        "schedule_conservativeness": [0.3, 1.0],
        "kv_cache_dtype": ["auto", "fp8_e5m2"],
        "disable_radix_cache": [False, True],
        "disable_cuda_graph": [False],
        "cuda_graph_max_bs": [64, 160],
        "stream_interval": [1, 4],
    },
}
MAX_LADDER = 16
MAX_GRID = 100_000


def _thread_ladder(cpus: int) -> list[int]:
    out = sorted({max(1, cpus // 4), max(1, cpus // 2), cpus})
    return out


def search_space(
    engine: str, *, version: str = "", cpu: bool = True, cpus: int | None = None, narrow=None
) -> dict[str, list]:
    """Each tunable flag's candidate values, keyed by the flag's canonical key.

    ``narrow`` ({flag name: [values]}), when given, is the whole space: only the flags it
    names are searched, over its values (each parsed by the flag itself; one value pins
    the flag). Naming a flag that is not tunable is refused on ``space``."""
    schema = schema_for(engine, version)
    cpus = cpus or os.cpu_count() or 1
    ladders = _LADDERS.get(engine, {})
    space: dict[str, list] = {}
    for flag in schema.flags:
        if not flag.tunable:
            continue
        key = flag.key
        if cpu and key in _GPU_ONLY:
            continue
        if key in ("n_threads", "n_threads_batch"):
            space[key] = _thread_ladder(cpus)
        elif key in ladders:
            space[key] = [v for v in ladders[key] if _fits(flag, v)]
    if narrow is not None:
        space = {}
        if not isinstance(narrow, dict) or not narrow:
            raise ValidationError({"space": "Give an object: {flag name: [values]}."})
        for name, values in narrow.items():
            named, _ = schema.lookup(str(name))
            if named is None or not named.tunable:
                allowed = ", ".join(sorted(f.name for f in schema.flags if f.tunable))
                raise ValidationError(
                    {"space": f"{str(name)[:60]!r} is not a tunable flag; tunable: {allowed}."}
                )
            if not isinstance(values, list) or not 1 <= len(values) <= MAX_LADDER:
                raise ValidationError(
                    {"space": f"{named.name}: give a list of 1 to {MAX_LADDER} values."}
                )
            try:
                parsed = [named.parse(v) for v in values]
            except (TypeError, ValueError):
                raise ValidationError(
                    {"space": f"{named.name}: every value must be {named.allowed_text()}."}
                ) from None
            space[named.key] = list(dict.fromkeys(parsed))
    space = {k: v for k, v in space.items() if v}
    if not space:
        raise ValidationError({"space": f"{engine} has nothing to tune here."})
    if grid_size(space) > MAX_GRID:
        raise ValidationError({"space": f"The space holds more than {MAX_GRID} configurations."})
    return space


def _fits(flag: Flag, value) -> bool:
    try:
        flag.parse(value)
    except (TypeError, ValueError):
        return False
    return True


def grid_size(space: dict[str, list]) -> int:
    return math.prod(len(v) for v in space.values())


def grid(space: dict[str, list]) -> list[dict]:
    """Every configuration of ``space`` (the exhaustive baseline), valid or not."""
    configs: list[dict] = [{}]
    for key, values in space.items():
        configs = [{**c, key: v} for c in configs for v in values]
    return configs


def invalid_reason(engine: str, params: dict) -> str:
    """Why the engine would refuse this combination ('' when it would start)."""
    if engine == "llama.cpp":
        if params.get("n_ubatch", 0) > params.get("n_batch", 1 << 30):
            return "n_ubatch larger than n_batch"
        if int(params.get("type_v", 1)) not in _F16_TYPES and not params.get("flash_attn"):
            return "a quantized V cache needs flash attention"
    if engine == "vllm" and params.get("max_num_batched_tokens", 1 << 30) < params.get(
        "max_num_seqs", 0
    ):
        return "max_num_batched_tokens below max_num_seqs"
    return ""


def launch_args(engine: str, params: dict, *, version: str = "") -> list[str]:
    """The engine's own spelling of ``params`` (through the flag schema, never raw text)."""
    by_key = schema_for(engine, version).by_key()
    return render_args([(by_key[k], v) for k, v in sorted(params.items())])


# --- objectives -------------------------------------------------------------------------


def _p95(point: dict, key: str) -> float | None:
    value = point.get(key)
    if isinstance(value, dict):
        value = value.get("p95")
    return float(value) if isinstance(value, int | float) else None


def meets_slo(point: dict, slo: dict) -> bool:
    for key in SLO_KEYS:
        limit = slo.get(key)
        if limit is None:
            continue
        measured: float | None = float(point.get("error_rate") or 0.0)
        if key != "error_rate":
            measured = _p95(point, key.removesuffix("_p95_ms") + "_ms")
        if measured is None or measured > float(limit):
            return False
    return True


def per_user_tps(point: dict) -> float:
    users = point.get("concurrency") or 1
    return float(point.get("output_tokens_per_s") or 0.0) / float(users)


def point_value(objective: str, point: dict, *, gpus: int) -> float | None:
    """One load point's objective value, None when the point cannot count."""
    if objective == Objective.MAX_THROUGHPUT:
        return float(point.get("output_tokens_per_s") or 0.0) / max(gpus, 1)
    if objective == Objective.MIN_COST:
        cost = point.get("cost_per_1m_output_tokens")
        return float(cost) if isinstance(cost, int | float) and cost > 0 else None
    return _p95(point, "e2e_ms")


def trial_value(objective: str, points: list[dict], slo: dict, *, gpus: int) -> float | None:
    """A trial's objective over its load points: the best point that meets the SLO (for
    min_latency_at_load, the point at the tuning's load, whose latency is the answer and
    the SLO is not applied). None: no point qualifies — the configuration is infeasible."""
    if not points:
        return None
    if objective == Objective.MIN_LATENCY:
        return point_value(objective, points[-1], gpus=gpus)
    values = [
        v
        for p in points
        if meets_slo(p, slo) and (v := point_value(objective, p, gpus=gpus)) is not None
    ]
    if not values:
        return None
    return max(values) if objective == Objective.MAX_THROUGHPUT else min(values)


def better(objective: str, a: float | None, b: float | None) -> bool:
    """Whether ``a`` beats ``b``."""
    if a is None:
        return False
    if b is None:
        return True
    return a > b if Objective.direction(objective) == "maximize" else a < b


def pareto_front(points: list[dict]) -> list[dict]:
    """The non-dominated points of (throughput per GPU, throughput per user), both to be
    maximised: each is a trade-off no other point beats on both axes. Each input dict has
    ``tps_per_gpu`` and ``tps_per_user``; ties keep the first."""
    front: list[dict] = []
    for p in sorted(points, key=lambda p: (-p["tps_per_gpu"], -p["tps_per_user"])):
        if not front or p["tps_per_user"] > front[-1]["tps_per_user"]:
            front.append(p)
    return front


# --- the study ---------------------------------------------------------------------------


@dataclass
class TrialRecord:
    """What a finished (or running) trial left, as the study needs it."""

    params: dict
    state: str  # complete | pruned | failed | running
    value: float | None = None
    intermediate: dict[int, float] = field(default_factory=dict)


def _distributions(space: dict[str, list]) -> dict[str, BaseDistribution]:
    return {k: CategoricalDistribution(tuple(v)) for k, v in space.items()}


def _in_space(params: dict, space: dict[str, list]) -> bool:
    return set(params) == set(space) and all(params[k] in space[k] for k in space)


def build_study(
    *,
    objective: str,
    space: dict[str, list],
    history: list[TrialRecord],
    warm: list[dict] = (),  # type: ignore[assignment]
    seed: int = 0,
    startup: int = 4,
) -> optuna.Study:
    """A TPE study holding ``history`` (this tuning's trials) with ``warm`` configurations
    (earlier tunings' best, same model family) queued first when not already tried."""
    sampler = optuna.samplers.TPESampler(
        seed=seed, n_startup_trials=startup, multivariate=True, n_ei_candidates=48
    )
    # A trial is pruned when its intermediate objective is worse than the median of earlier
    # trials at the same load step, once three trials have completed.
    pruner = optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0)
    study = optuna.create_study(
        direction=Objective.direction(objective), sampler=sampler, pruner=pruner
    )
    dists = _distributions(space)
    tried = []
    for rec in history:
        params = {k: rec.params.get(k) for k in space}
        if not _in_space(params, space):
            continue
        tried.append(params)
        state = {
            "complete": TrialState.COMPLETE,
            "pruned": TrialState.PRUNED,
        }.get(rec.state, TrialState.FAIL)
        value = rec.value if state == TrialState.COMPLETE and rec.value is not None else None
        if state == TrialState.COMPLETE and value is None:
            state = TrialState.FAIL  # ran, but no point met the SLO: infeasible
        study.add_trial(
            optuna.trial.create_trial(
                state=state,
                value=value,
                params=params,
                distributions=dists,
                intermediate_values={int(s): float(v) for s, v in rec.intermediate.items()},
            )
        )
    for params in warm:
        params = {k: params.get(k) for k in space}
        if _in_space(params, space) and params not in tried:
            study.enqueue_trial(params, skip_if_exists=True)
            tried.append(params)
    return study


def propose(
    *,
    engine: str,
    objective: str,
    space: dict[str, list],
    history: list[TrialRecord],
    warm: list[dict] = (),  # type: ignore[assignment]
    seed: int = 0,
) -> tuple[optuna.Study, optuna.Trial, dict]:
    """The next configuration to try: the study, its open trial and the params. Invalid
    combinations the engine would refuse are told to the study as failed and redrawn, and
    a configuration already tried is not tried again while untried ones remain."""
    study = build_study(objective=objective, space=space, history=history, warm=warm, seed=seed)
    dists = _distributions(space)
    tried = [{k: r.params.get(k) for k in space} for r in history]
    total = grid_size(space)
    for _ in range(30):
        trial = study.ask(dists)
        params = dict(trial.params)
        if invalid_reason(engine, params) or (params in tried and len(tried) < total):
            study.tell(trial, state=TrialState.FAIL)
            continue
        return study, trial, params
    # TPE keeps drawing what it has drawn (a small categorical space): take an untried,
    # valid configuration in a seeded order instead, as a trial of the same study.
    order = grid(space)
    random.Random(seed).shuffle(order)  # noqa: S311 - an order to try, not a secret
    for params in order:
        if params not in tried and not invalid_reason(engine, params):
            study.enqueue_trial(params)
            trial = study.ask(dists)
            return study, trial, dict(trial.params)
    raise ValidationError({"space": "No valid configuration is left to try in this space."})


def converged(objective: str, values: list[float | None], *, patience: int, tol: float) -> bool:
    """True when the last ``patience`` trials improved the best by less than ``tol``
    (relative) — the search has stopped learning. ``values`` in trial order."""
    if len(values) <= patience:
        return False
    before = [v for v in values[:-patience] if v is not None]
    recent = [v for v in values[-patience:] if v is not None]
    if not before:
        return False
    best_before = max(before) if Objective.direction(objective) == "maximize" else min(before)
    if not recent:
        return True
    best_recent = max(recent) if Objective.direction(objective) == "maximize" else min(recent)
    gain = best_recent - best_before
    if Objective.direction(objective) == "minimize":
        gain = -gain
    return gain <= tol * abs(best_before)
