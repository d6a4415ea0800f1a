"""A serving profile rendered as the exact engine launch, for review and for deploy.

One function, ``profile_launch``, turns a profile and its model's facts into the engine
arguments a deployment of it is started with, and the whole command for people to read.
The arguments are checked against the engine's flag schema (deployments.flags) for the
version the profile is written for, so what the page shows is what deploy passes.

Flag names (checked against each engine's documentation):
- vLLM (its OpenAI server, ``vllm serve``, 0.11): ``--tensor-parallel-size``,
  ``--data-parallel-size``, ``--enable-expert-parallel``, ``--quantization fp8`` (online
  FP8 from 16-bit weights), ``--max-model-len``, ``--max-num-seqs``,
  ``--gpu-memory-utilization``, ``--kv-cache-dtype``, ``--enable-prefix-caching``.
- SGLang (``python -m sglang.launch_server``, 0.5): ``--tp-size`` (``--tp``), ``--dp-size``,
  ``--ep-size``, ``--quantization fp8``, ``--context-length``, ``--max-running-requests``,
  ``--mem-fraction-static``, ``--kv-cache-dtype``, ``--enable-metrics`` (its radix prefix
  cache is on by default; the metrics are what the pool scrapes for autoscaling).
- llama.cpp (llama-cpp-python's server, 0.3): ``--n_ctx``, ``--cache true`` (the prompt
  cache); the quantization is the GGUF file itself.

Every profile turns on the engine's own prompt cache, so prefix-affinity routing has
something to hit.
"""

from dataclasses import dataclass, field

from django.core.exceptions import ValidationError

from deployments.engines import engine_command
from deployments.flags import parse_engine_args, render_args, schema_for

GGUF_ONLY = ("q8_0", "q4_k_m")  # quants that exist only as GGUF files
LLAMACPP_QUANTS = {*GGUF_ONLY, "f32", "f16", "bf16"}
GPU_ENGINES = {"vllm", "sglang"}
# Expert parallelism pays off once the experts are most of a model too big for few GPUs.
LARGE_MOE_B = 100
# Checkpoint formats an engine reads from the repo's own config: no flag needed.
REPO_QUANTS = {"awq-int4", "gptq-int4"}
ELIDED = "<elided>"
PORT = 8000


@dataclass(frozen=True)
class Launch:
    argv: list[str]  # the whole command, as people read it; secrets elided
    engine_args: list[str]  # what a deployment of the profile passes to the engine
    engine_version: str
    model_ref: str
    tensor_parallel: int
    notes: list[str] = field(default_factory=list)


def _refuse(profile, name: str, message: str) -> ValidationError:
    where = f"{profile.model.slug}/{profile.name}"
    return ValidationError({name: f"{where}: {message}"})


def _tensor_parallel(profile) -> tuple[int, int, list[str]]:
    """(tensor parallel, data parallel, notes): TP is the GPU count unless the profile
    says otherwise with a reason; the GPUs left over become data-parallel copies."""
    count = profile.gpu_count
    tp = profile.tensor_parallel or count
    notes = []
    if tp != count:
        if not profile.parallel_reason.strip():
            raise _refuse(
                profile,
                "tensor_parallel",
                f"tensor parallel {tp} differs from the GPU count {count}; give parallel_reason",
            )
        if count % tp:
            raise _refuse(
                profile, "tensor_parallel", f"tensor parallel {tp} does not divide {count} GPUs"
            )
        notes.append(f"TP {tp} × DP {count // tp}: {profile.parallel_reason}")
    heads = profile.model.num_heads
    if heads % tp:
        raise _refuse(
            profile,
            "tensor_parallel",
            f"tensor parallel {tp} does not divide the {heads} attention heads",
        )
    return tp, count // tp, notes


def _gguf_names_other_quant(ref: str, quant: str) -> bool:
    """Whether a GGUF file's name says it holds another quant than the profile's."""
    name = ref.rsplit("/", 1)[-1].lower().replace("-", "_")
    named = [q for q in (*GGUF_ONLY, "f32", "bf16", "f16") if q in name]
    # The builder files an F16 GGUF under bf16 (two bytes a weight either way).
    same = {quant, "f16"} if quant == "bf16" else {quant}
    return bool(named) and not same & set(named)


def _weights(profile) -> tuple[str, list[str], list[str]]:
    """(model_ref, quantization flags, notes) for the profile's quantization."""
    model, quant, engine = profile.model, profile.quantization, profile.engine
    repos = model.quant_repos or {}
    ref = profile.model_ref or model.hf_repo
    # A private entry is an organization's build: its weights are what the builder
    # inspected and cached, so there is no catalog repo list to check them against.
    curated = model.organization_id is None
    if engine == "llama.cpp":
        if quant not in LLAMACPP_QUANTS:
            raise _refuse(profile, "quant", f"llama.cpp serves GGUF files, not {quant}")
        if ref.startswith("demo:"):
            return ref, [], []
        not_gguf = curated and not ref.lower().endswith(".gguf")
        if not_gguf or _gguf_names_other_quant(ref, quant):
            raise _refuse(profile, "model_ref", f"give the {quant.upper()} GGUF file, not {ref!r}")
        return ref, [], [f"GGUF file {ref.rsplit('/', 1)[-1]}"]
    if quant in GGUF_ONLY:
        raise _refuse(profile, "quant", f"{engine} does not serve {quant} (a GGUF quant)")
    if not curated:
        return ref, [], [f"weights as built ({quant})"]
    known = {model.hf_repo, *repos.values()}
    if ref not in known:
        raise _refuse(
            profile,
            "model_ref",
            f"{ref!r} is not among the model's repos ({', '.join(sorted(known))})",
        )
    if quant in REPO_QUANTS:
        if repos.get(quant) != ref:
            raise _refuse(
                profile, "model_ref", f"{quant} needs the {quant} repo listed in quant_repos"
            )
        return ref, [], [f"{quant} weights from {ref}"]
    if quant == "fp8":
        if repos.get("fp8") == ref:
            return ref, [], [f"FP8 weights from {ref}"]
        return ref, ["--quantization", "fp8"], [f"FP8 quantized on load from {ref}"]
    if quant in ("bf16", "f32"):
        if ref in set(repos.values()):
            raise _refuse(profile, "model_ref", f"{ref} holds quantized weights, not {quant}")
        return ref, [], []
    raise _refuse(profile, "quant", f"no launch is written for {quant} on {engine}")


def _expert_parallel(profile, tp: int) -> bool:
    m = profile.model
    return (
        profile.engine in GPU_ENGINES
        and m.is_moe
        and float(m.parameters_b) >= LARGE_MOE_B
        and tp > 1
    )


def _profile_args(profile, tp: int, dp: int, ep: bool, quant_flags: list[str]) -> list[str]:
    seqs, length = str(profile.concurrent_sequences), str(profile.max_model_len)
    util = f"{profile.gpu_memory_utilization:.2f}"
    kv_dtype = profile.kv_cache_dtype
    kv = [] if kv_dtype in ("", "auto") else ["--kv-cache-dtype", kv_dtype]
    if profile.engine == "vllm":
        return [
            *["--tensor-parallel-size", str(tp)],
            *(["--data-parallel-size", str(dp)] if dp > 1 else []),
            *(["--enable-expert-parallel"] if ep else []),
            *quant_flags,
            *["--max-model-len", length, "--max-num-seqs", seqs],
            *["--gpu-memory-utilization", util],
            *kv,
            "--enable-prefix-caching",
        ]
    if profile.engine == "sglang":
        return [
            *["--tp-size", str(tp)],
            *(["--dp-size", str(dp)] if dp > 1 else []),
            *(["--ep-size", str(tp)] if ep else []),
            *quant_flags,
            *["--context-length", length, "--max-running-requests", seqs],
            *["--mem-fraction-static", util],
            *kv,
            "--enable-metrics",
        ]
    if profile.gpu_count != 1:
        raise _refuse(profile, "count", "llama.cpp replicas run on one CPU slot")
    return ["--n_ctx", length, "--cache", "true"]


def _shown_ref(model_ref: str) -> str:
    """A hub repo as it is; a path on the node only by its file name (the folders of a
    node's weights cache are the operator's business, not a tenant's)."""
    if model_ref.startswith("/"):
        return "<weights cache>/" + model_ref.rstrip("/").rsplit("/", 1)[-1]
    return model_ref


def _command(engine: str, model_ref: str, args: list[str]) -> list[str]:
    """What a replica runs — the drivers' own command (deployments.engines and
    deployments.drivers.launch) — with the per-replica parts as placeholders. The engine's
    key travels in the environment (API_KEY, VLLM_API_KEY), except SGLang's: elided."""
    argv = engine_command(
        engine,
        model_path=_shown_ref(model_ref),
        port=PORT,
        host="<replica address>",
        args=args,
        python="python3",
    )
    if engine == "llama.cpp":
        return [*argv, "--model_alias", "<deployment name>"]
    if engine == "vllm":
        return [*argv, "--served-model-name", "<deployment name>"]
    return [*argv, "--served-model-name", "<deployment name>", "--api-key", ELIDED]


def profile_launch(profile, *, strict: bool = False) -> Launch:
    """The exact launch of ``profile``, or a ValidationError naming the profile, the field
    and what is wrong. ``strict`` (catalog files, staff edits) also refuses extra args that
    repeat a flag the profile's fields render."""
    schema = schema_for(profile.engine, profile.engine_version)
    tp, dp, notes = _tensor_parallel(profile)
    ref, quant_flags, weight_notes = _weights(profile)
    ep = _expert_parallel(profile, tp)
    args = _profile_args(profile, tp, dp, ep, quant_flags)
    if ep:
        notes.append(f"expert parallel over {tp} GPUs (MoE, {profile.model.parameters_b}B)")
    try:
        pairs = parse_engine_args(profile.engine, args, version=schema.version)
        extra = parse_engine_args(
            profile.engine, list(profile.engine_args or []), version=schema.version
        )
    except ValidationError as exc:
        message = " ".join(exc.messages)
        raise _refuse(profile, "args", message) from None
    given = {flag.key for flag, _ in extra}
    clash = [flag.name for flag, _ in pairs if flag.key in given]
    if clash and strict:
        raise _refuse(
            profile, "args", f"{clash[0]} is rendered from the profile's fields; set it there"
        )
    # Outside review (a build's wizard options, a published tuning) an explicit flag takes
    # the place of the rendered one, and the launch says so.
    notes += [f"{name} from the profile's args, not its fields" for name in clash]
    engine_args = render_args([*(fp for fp in pairs if fp[0].key not in given), *extra])
    return Launch(
        argv=_command(profile.engine, ref, engine_args),
        engine_args=engine_args,
        engine_version=schema.version,
        model_ref=ref,
        tensor_parallel=tp,
        notes=[*notes, *weight_notes],
    )


def launch_or_reason(profile) -> tuple[Launch | None, str]:
    """For pages and the API: the launch, or why there is none (an operator's edit that
    does not validate shows its reason instead of breaking the page)."""
    try:
        return profile_launch(profile), ""
    except ValidationError as exc:
        return None, " ".join(exc.messages)
