"""The engine flags a tenant may set: a schema per engine and engine version.

Flags are values from an allow-list, never free text checked against a deny list. Each
flag has a name, a type, a range or choices and a help line; a tenant's arguments are
parsed here (``--flag value`` and ``--flag=value``) into (flag, value) pairs and matched
exactly after ``_``/``-`` are made equal — never by prefix, as argparse would: llama.cpp's
server takes ``--hos`` for ``--host``. What reaches the engine is re-rendered from the
pairs under each flag's canonical name, so the engine's parser never sees tenant text
that could read as another option.

Flags that read files, run remote code, open ports, change addresses or auth, or load
adapters and templates from paths are simply absent: nothing names them but the error.
``tunable`` marks the flags a serving-config search may vary (the Lab's search space).
"""

import re
from dataclasses import dataclass, field

from django.core.exceptions import ValidationError

MAX_ARGS = 40
MAX_ARG_CHARS = 200
_INT_RE = re.compile(r"^-?[0-9]{1,12}$")
_FLOAT_RE = re.compile(r"^-?[0-9]{1,9}(\.[0-9]{1,9})?$")
TRUE, FALSE = "true", "false"


@dataclass(frozen=True)
class Flag:
    """One settable flag. ``name`` is what the engine's own parser calls it."""

    name: str
    kind: type  # int, float, bool or str
    help: str
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()
    tunable: bool = False
    aliases: tuple[str, ...] = ()
    # How the engine takes a boolean: "value" (--flag true), "optional" (--flag /
    # --no-flag, argparse's BooleanOptionalAction) or "switch" (--flag, or nothing).
    bool_style: str = "value"

    @property
    def key(self) -> str:
        return normalize(self.name)

    def allowed_text(self) -> str:
        if self.kind is bool:
            return "true or false"
        if self.choices:
            return "one of " + ", ".join(self.choices)
        if self.kind is int:
            return f"a whole number from {self.low:g} to {self.high:g}"
        return f"a number from {self.low:g} to {self.high:g}"

    def parse(self, raw) -> bool | int | float | str:
        """The typed value of ``raw`` (text from a command line, or a JSON value), or
        ValueError. Booleans are explicit: true or false, nothing else."""
        if self.kind is bool:
            if isinstance(raw, bool):
                return raw
            if raw in (TRUE, FALSE):
                return raw == TRUE
            raise ValueError
        if isinstance(raw, bool):
            raise ValueError  # JSON true is not the number 1
        text = raw if isinstance(raw, str) else str(raw)
        if self.choices:
            if text not in self.choices:
                raise ValueError
            return self.kind(text)
        if self.kind is int:
            if not _INT_RE.match(text):
                raise ValueError
            value = int(text)
        else:
            if not _FLOAT_RE.match(text):
                raise ValueError
            value = float(text)
        if not self.low <= value <= self.high:
            raise ValueError
        return value

    def render(self, value) -> list[str]:
        """The engine's own spelling of this flag set to ``value``."""
        if self.kind is not bool:
            return [self.name, str(value)]
        if self.bool_style == "value":
            return [self.name, TRUE if value else FALSE]
        if self.bool_style == "optional":
            return [self.name if value else "--no-" + self.name[2:]]
        return [self.name] if value else []


@dataclass(frozen=True)
class EngineSchema:
    engine: str
    version: str
    flags: tuple[Flag, ...]
    # Flags the platform sets itself, named so the refusal can say why.
    reserved: frozenset[str] = field(default_factory=frozenset)

    def lookup(self, name: str) -> tuple[Flag | None, bool | None]:
        """The flag ``name`` means, exactly, and for a ``--no-`` spelling of an optional
        boolean the value it implies."""
        key = normalize(name)
        for f in self.flags:
            if key == f.key or key in {normalize(a) for a in f.aliases}:
                return f, None
            if f.bool_style == "optional" and key == "no_" + f.key:
                return f, False
        return None, None

    def names(self) -> list[str]:
        return sorted(f.name for f in self.flags)

    def by_key(self) -> dict[str, Flag]:
        return {f.key: f for f in self.flags}


def normalize(name: str) -> str:
    """``--n-threads`` and ``--n_threads`` are one flag; case is not folded."""
    return name.removeprefix("--").replace("-", "_")


def _i(name, low, high, help, **kw) -> Flag:
    return Flag(name, int, help, low=low, high=high, **kw)


def _f(name, low, high, help, **kw) -> Flag:
    return Flag(name, float, help, low=low, high=high, **kw)


def _b(name, help, style="value", **kw) -> Flag:
    return Flag(name, bool, help, bool_style=style, **kw)


def _c(name, choices, help, kind=str, **kw) -> Flag:
    return Flag(name, kind, help, choices=tuple(choices), **kw)


CONTEXT_MAX = 1_048_576
SEED_MAX = 4_294_967_295

# llama-cpp-python's server (llama_cpp/server/settings.py, 0.3.x): every model setting
# is a flag spelled with underscores. Left out on purpose: model, model_alias, host, port,
# api_key, ssl_*, config_file, root_path (the platform's); lora_*, clip_model_path,
# hf_tokenizer_config_path, hf_pretrained_model_name_or_path, hf_model_repo_id,
# chat_template_kwargs, kv_overrides (files, downloads or arbitrary JSON); rpc_servers
# (connects out); main_gpu, tensor_split, split_mode (GPUs are placement's); use_mlock,
# numa (node-wide resources); cache_type=disk (writes to the node's disk).
LLAMACPP_0_3 = (
    _i("--n_ctx", 0, CONTEXT_MAX, "Context size in tokens (0: the model's own)."),
    _i("--n_threads", 1, 256, "Threads for generation.", tunable=True),
    _i("--n_threads_batch", 1, 256, "Threads for prompt processing.", tunable=True),
    _i("--n_batch", 1, 8192, "Prompt processing batch size.", tunable=True),
    _i("--n_ubatch", 1, 8192, "Physical batch size.", tunable=True),
    _i("--n_gpu_layers", -1, 1000, "Layers offloaded to the GPU (-1: all).", tunable=True),
    _b("--flash_attn", "Use flash attention.", tunable=True),
    _b("--offload_kqv", "Keep the KV cache on the GPU.", tunable=True),
    _b("--use_mmap", "Memory-map the model file."),
    # ggml type ids: 0 f32, 1 f16, 2 q4_0, 3 q4_1, 6 q5_0, 7 q5_1, 8 q8_0, 30 bf16.
    _c("--type_k", ("0", "1", "2", "3", "6", "7", "8", "30"), "Key cache type.", int, tunable=True),
    _c(
        "--type_v",
        ("0", "1", "2", "3", "6", "7", "8", "30"),
        "Value cache type.",
        int,
        tunable=True,
    ),
    _b("--cache", "Cache evaluated prompts in memory.", tunable=True),
    _c("--cache_type", ("ram",), "Where the prompt cache lives (memory only)."),
    _i("--cache_size", 0, 8 << 30, "Prompt cache size in bytes (at most 8 GiB)."),
    _i("--last_n_tokens_size", 0, 4096, "Tokens kept for the repeat penalty."),
    _i("--seed", 0, SEED_MAX, "Random seed."),
    _c(
        "--chat_format",
        (
            "llama-2",
            "llama-3",
            "alpaca",
            "qwen",
            "vicuna",
            "oasst_llama",
            "baichuan-2",
            "baichuan",
            "openbuddy",
            "redpajama-incite",
            "snoozy",
            "phind",
            "intel",
            "open-orca",
            "mistrallite",
            "zephyr",
            "pygmalion",
            "chatml",
            "mistral-instruct",
            "chatglm3",
            "openchat",
            "saiga",
            "gemma",
        ),
        "A built-in chat format (default: the model's own template).",
    ),
    _c("--draft_model", ("prompt-lookup-decoding",), "Speculative decoding method."),
    _i("--draft_model_num_pred_tokens", 1, 64, "Tokens the draft predicts.", tunable=True),
)
LLAMACPP_RESERVED = frozenset(
    {"model", "model_alias", "host", "port", "api_key", "ssl_keyfile", "ssl_certfile"}
    | {"config_file", "root_path", "lora_path", "lora_base", "clip_model_path"}
    | {"hf_tokenizer_config_path", "hf_pretrained_model_name_or_path", "hf_model_repo_id"}
)

KV_DTYPES_VLLM = ("auto", "fp8", "fp8_e4m3", "fp8_e5m2")
# Methods that need no file beyond the checkpoint (vLLM's --quantization choices).
VLLM_QUANTS = ("fp8", "awq", "awq_marlin", "gptq", "gptq_marlin", "compressed-tensors")
SGLANG_QUANTS = ("fp8", "awq", "awq_marlin", "gptq", "gptq_marlin", "compressed-tensors")
DTYPES = ("auto", "half", "float16", "bfloat16", "float", "float32")

# vLLM's OpenAI server (vllm/engine/arg_utils.py, 0.11): dashes, booleans as
# BooleanOptionalAction. Left out: model, host, port, api-key, trust-remote-code,
# download-dir, tokenizer, chat-template, lora-modules, served-model-name, ssl-*,
# load-format, allowed-local-media-path and the like.
VLLM_0_11 = (
    _i("--max-model-len", 16, CONTEXT_MAX, "Context length in tokens."),
    _i("--max-num-seqs", 1, 4096, "Sequences per iteration.", tunable=True),
    _i("--max-num-batched-tokens", 16, CONTEXT_MAX, "Tokens per iteration.", tunable=True),
    _f("--gpu-memory-utilization", 0.1, 0.99, "Share of GPU memory to use.", tunable=True),
    _c("--kv-cache-dtype", KV_DTYPES_VLLM, "KV cache data type.", tunable=True),
    _b(
        "--enable-prefix-caching",
        "Reuse the KV cache of shared prefixes.",
        "optional",
        tunable=True,
    ),
    _b("--enable-chunked-prefill", "Split long prompts into chunks.", "optional", tunable=True),
    _b("--enforce-eager", "Run without CUDA graphs.", "optional", tunable=True),
    _i("--tensor-parallel-size", 1, 16, "GPUs one model is split over."),
    _i("--data-parallel-size", 1, 16, "Data-parallel copies in one replica."),
    # Experts spread over the tensor-parallel GPUs instead of split inside each expert.
    _b("--enable-expert-parallel", "Expert parallelism for MoE layers.", "optional"),
    _c("--quantization", VLLM_QUANTS, "Weight quantization (fp8: online, from 16-bit weights)."),
    _c("--block-size", ("1", "8", "16", "32", "64", "128"), "KV cache block size.", int),
    _f("--swap-space", 0, 64, "CPU swap space per GPU, GiB."),
    _c("--dtype", DTYPES, "Weight and activation data type."),
    _i("--seed", 0, 2**31 - 1, "Random seed."),
    _i("--max-logprobs", 0, 100, "Most log-probabilities returned."),
)
VLLM_RESERVED = frozenset(
    {"model", "host", "port", "api_key", "trust_remote_code", "download_dir", "tokenizer"}
    | {"chat_template", "lora_modules", "served_model_name", "ssl_keyfile", "ssl_certfile"}
    | {"load_format", "allowed_local_media_path", "root_path"}
)

# SGLang's server (sglang/srt/server_args.py, 0.5): dashes, booleans as switches.
SGLANG_0_5 = (
    _i("--context-length", 16, CONTEXT_MAX, "Context length in tokens."),
    _f("--mem-fraction-static", 0.1, 0.99, "Share of GPU memory for weights and KV.", tunable=True),
    _i("--max-running-requests", 1, 4096, "Requests running at once.", tunable=True),
    _i("--max-total-tokens", 16, 10_000_000, "Tokens in the KV pool."),
    _i("--chunked-prefill-size", -1, CONTEXT_MAX, "Prefill chunk (-1: off).", tunable=True),
    _i("--max-prefill-tokens", 16, CONTEXT_MAX, "Tokens per prefill batch.", tunable=True),
    _i("--tp-size", 1, 16, "GPUs one model is split over.", aliases=("--tp",)),
    _i("--dp-size", 1, 16, "Data-parallel copies.", aliases=("--dp",)),
    _i("--ep-size", 1, 16, "GPUs the MoE experts are spread over.", aliases=("--ep",)),
    _c("--quantization", SGLANG_QUANTS, "Weight quantization (fp8: online, from 16-bit weights)."),
    _c(
        "--schedule-policy",
        ("lpm", "random", "fcfs", "dfs-weight", "lof", "priority"),
        "Scheduling policy.",
        tunable=True,
    ),
    _f("--schedule-conservativeness", 0.01, 10, "How cautious admission is.", tunable=True),
    _c("--kv-cache-dtype", ("auto", "fp8_e5m2", "fp8_e4m3"), "KV cache data type.", tunable=True),
    _b("--disable-radix-cache", "Turn prefix caching off.", "switch", tunable=True),
    _b("--enable-metrics", "Serve Prometheus metrics (queue, KV-cache use).", "switch"),
    _b("--disable-cuda-graph", "Run without CUDA graphs.", "switch", tunable=True),
    _i("--cuda-graph-max-bs", 1, 1024, "Largest batch captured in CUDA graphs.", tunable=True),
    _b("--enable-torch-compile", "Compile the model with torch.compile.", "switch"),
    _c("--dtype", DTYPES, "Weight and activation data type."),
    _i("--random-seed", 0, 2**31 - 1, "Random seed."),
    _i("--stream-interval", 1, 1000, "Tokens per streamed chunk.", tunable=True),
)
SGLANG_RESERVED = frozenset(
    {"model_path", "host", "port", "api_key", "trust_remote_code", "download_dir"}
    | {"tokenizer_path", "chat_template", "lora_paths", "served_model_name", "load_format"}
)

# The versions each engine is shipped at, oldest first; the last is the default.
SCHEMAS: dict[str, dict[str, EngineSchema]] = {
    "llama.cpp": {"0.3.36": EngineSchema("llama.cpp", "0.3.36", LLAMACPP_0_3, LLAMACPP_RESERVED)},
    "vllm": {"0.11.0": EngineSchema("vllm", "0.11.0", VLLM_0_11, VLLM_RESERVED)},
    "sglang": {"0.5.3": EngineSchema("sglang", "0.5.3", SGLANG_0_5, SGLANG_RESERVED)},
}
ENGINE_VERSIONS = {engine: list(versions) for engine, versions in SCHEMAS.items()}


def schema_for(engine: str, version: str = "") -> EngineSchema:
    versions = SCHEMAS.get(engine)
    if not versions:
        raise ValidationError({"engine": f"Choose one of: {', '.join(SCHEMAS)}."})
    if not version:
        return versions[ENGINE_VERSIONS[engine][-1]]
    if version not in versions:
        raise ValidationError(
            {"engine_version": f"{engine} versions: {', '.join(ENGINE_VERSIONS[engine])}."}
        )
    return versions[version]


def _shown(text: str) -> str:
    return repr(text if len(text) <= 60 else text[:60] + "…")


def _refuse(schema: EngineSchema, name: str, field_name: str) -> ValidationError:
    allowed = ", ".join(schema.names())
    where = f"{schema.engine} {schema.version}"
    if normalize(name) in schema.reserved or normalize(name).lower() in schema.reserved:
        why = f"{_shown(name)} is set by Gantry or never allowed on {where}"
    else:
        why = f"{_shown(name)} is not a flag tenants may set on {where}"
    return ValidationError({field_name: f"{why}; allowed: {allowed}."})


def parse_engine_args(
    engine: str, args, *, version: str = "", field_name: str = "engine_args"
) -> list[tuple[Flag, bool | int | float | str]]:
    """A tenant's engine arguments as (flag, value) pairs, or a ValidationError on
    ``field_name`` naming the first bad argument and what is allowed."""
    schema = schema_for(engine, version)
    if not isinstance(args, list | tuple) or not all(isinstance(a, str) for a in args):
        raise ValidationError({field_name: 'Give a list of strings, e.g. ["--n_ctx", "2048"].'})
    if len(args) > MAX_ARGS:
        raise ValidationError({field_name: f"At most {MAX_ARGS} arguments."})
    for arg in args:
        if len(arg) > MAX_ARG_CHARS:
            raise ValidationError(
                {field_name: f"Each argument holds at most {MAX_ARG_CHARS} characters."}
            )
    pairs: list[tuple[Flag, bool | int | float | str]] = []
    seen: set[str] = set()
    i = 0
    while i < len(args):
        token = args[i]
        i += 1
        if not token.startswith("--"):
            raise ValidationError(
                {field_name: f"{_shown(token)} is not a flag: write --name value or --name=value."}
            )
        name, eq, raw = token.partition("=")
        flag, implied = schema.lookup(name)
        if flag is None:
            raise _refuse(schema, name, field_name)
        if implied is not None:
            if eq:
                raise ValidationError({field_name: f"{name} takes no value."})
            raw = implied
        elif not eq:
            takes_next = i < len(args) and not args[i].startswith("--")
            if takes_next:
                raw = args[i]
                i += 1
            elif flag.kind is bool and flag.bool_style != "value":
                raw = True  # a switch named alone, as the engine's own parser reads it
            else:
                raise ValidationError(
                    {field_name: f"{flag.name} needs a value: {flag.allowed_text()}."}
                )
        try:
            value = flag.parse(raw)
        except (TypeError, ValueError):
            raise ValidationError(
                {
                    field_name: f"{_shown(str(raw))} is not allowed for {flag.name}: "
                    f"give {flag.allowed_text()}."
                }
            ) from None
        if flag.key in seen:
            raise ValidationError({field_name: f"{flag.name} is given twice."})
        seen.add(flag.key)
        pairs.append((flag, value))
    return pairs


def render_args(pairs) -> list[str]:
    out: list[str] = []
    for flag, value in pairs:
        out += flag.render(value)
    return out


def validate_engine_args(engine: str, args, *, version: str = "") -> list[str]:
    """Tenant arguments, checked against the schema and re-spelled the engine's way."""
    return render_args(parse_engine_args(engine, args, version=version))


def schema_document(engine: str, version: str = "") -> list[dict]:
    """The schema as data (for pages, the API and a tuner's search space)."""
    schema = schema_for(engine, version)
    return [
        {
            "name": f.name,
            "type": f.kind.__name__,
            "min": f.low,
            "max": f.high,
            "choices": list(f.choices),
            "help": f.help,
            "tunable": f.tunable,
            "aliases": list(f.aliases),
        }
        for f in sorted(schema.flags, key=lambda f: f.name)
    ]


def flag_tables() -> list[dict]:
    """Each engine's current schema, for the deployment form's reference table."""
    tables = []
    for engine in SCHEMAS:
        schema = schema_for(engine)
        rows = [
            {"name": f.name, "allowed": f.allowed_text(), "help": f.help}
            for f in sorted(schema.flags, key=lambda f: f.name)
        ]
        tables.append({"engine": engine, "version": schema.version, "flags": rows})
    return tables
