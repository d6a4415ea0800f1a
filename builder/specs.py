"""Build specs: which engines serve an architecture, the options each engine takes
(validated values, never free text), and the Dockerfile rendered from them."""

import hashlib
import json
import re

from django.conf import settings
from django.core.exceptions import ValidationError

# Architectures (config.json `architectures`) each engine serves, and GGUF
# `general.architecture` values llama.cpp serves.
ENGINE_ARCHITECTURES = {
    "vllm": {
        "LlamaForCausalLM",
        "MistralForCausalLM",
        "MixtralForCausalLM",
        "Qwen2ForCausalLM",
        "Qwen2MoeForCausalLM",
        "Qwen3ForCausalLM",
        "Qwen3MoeForCausalLM",
        "DeepseekV2ForCausalLM",
        "DeepseekV3ForCausalLM",
        "Gemma2ForCausalLM",
        "Gemma3ForCausalLM",
        "Phi3ForCausalLM",
        "Llama4ForConditionalGeneration",
    },
    "sglang": {
        "LlamaForCausalLM",
        "MistralForCausalLM",
        "MixtralForCausalLM",
        "Qwen2ForCausalLM",
        "Qwen2MoeForCausalLM",
        "Qwen3ForCausalLM",
        "Qwen3MoeForCausalLM",
        "DeepseekV2ForCausalLM",
        "DeepseekV3ForCausalLM",
        "Gemma2ForCausalLM",
        "Llama4ForConditionalGeneration",
    },
    "llama.cpp": {
        "gguf:llama",
        "gguf:qwen2",
        "gguf:qwen2moe",
        "gguf:qwen3",
        "gguf:qwen3moe",
        "gguf:deepseek2",
        "gguf:gemma2",
        "gguf:gemma3",
        "gguf:phi3",
        "gguf:mistral",
    },
}
ENGINE_VERSIONS = {"llama.cpp": ["0.3.36"], "vllm": ["0.11.0"], "sglang": ["0.5.3"]}
QUANTIZATIONS = {
    "llama.cpp": ["as-file"],
    "vllm": ["bf16", "fp8", "awq-int4", "gptq-int4"],
    "sglang": ["bf16", "fp8"],
}

# option -> (type, low, high or allowed values, command-line flag)
OPTIONS = {
    "llama.cpp": {
        "n_threads": (int, 1, 256, "--n_threads"),
        "n_batch": (int, 1, 8192, "--n_batch"),
        "n_gpu_layers": (int, -1, 1000, "--n_gpu_layers"),
        "flash_attn": (bool, None, None, "--flash_attn"),
    },
    "vllm": {
        "max_num_seqs": (int, 1, 4096, "--max-num-seqs"),
        "gpu_memory_utilization": (float, 0.1, 0.99, "--gpu-memory-utilization"),
        "tensor_parallel_size": (int, 1, 16, "--tensor-parallel-size"),
        "enable_prefix_caching": (bool, None, None, "--enable-prefix-caching"),
        "kv_cache_dtype": (str, None, ["auto", "fp8"], "--kv-cache-dtype"),
    },
    "sglang": {
        "mem_fraction_static": (float, 0.1, 0.99, "--mem-fraction-static"),
        "tp_size": (int, 1, 16, "--tp-size"),
        "max_running_requests": (int, 1, 4096, "--max-running-requests"),
    },
}
ENV_NAME_RE = re.compile(r"^[A-Z_][A-Z0-9_]{0,63}$")
ENV_VALUE_RE = re.compile(r"^[A-Za-z0-9_.,:/@+=-]{0,200}$")
RESERVED_ENV = {
    "PATH",
    "HOME",
    "LD_PRELOAD",
    "LD_LIBRARY_PATH",
    "PYTHONPATH",
    "GANTRY_REPLICA",
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
}


def engines_for(architecture: str) -> list[str]:
    return [e for e, archs in ENGINE_ARCHITECTURES.items() if architecture in archs]


def validate_options(engine: str, options) -> dict:
    if not isinstance(options, dict):
        raise ValidationError({"options": "Give options as a mapping of name to value."})
    allowed = OPTIONS.get(engine, {})
    clean = {}
    for name, value in options.items():
        if name not in allowed:
            raise ValidationError(
                {
                    "options": (
                        f"{name!r} is not an option of {engine}; allowed: "
                        + ", ".join(sorted(allowed))
                        + "."
                    )
                }
            )
        kind, low, high, _flag = allowed[name]
        try:
            if kind is bool:
                if not isinstance(value, bool) and str(value).lower() not in {"true", "false"}:
                    raise ValueError
                value = value if isinstance(value, bool) else str(value).lower() == "true"
            elif kind is str:
                if value not in high:
                    raise ValueError
            else:
                value = kind(value)
                if not low <= value <= high:
                    raise ValueError
        except (TypeError, ValueError):
            allowed_text = (
                f"one of {', '.join(high)}"
                if kind is str
                else "true or false"
                if kind is bool
                else f"from {low} to {high}"
            )
            raise ValidationError(
                {"options": f"{name} must be {allowed_text}; got {value!r}."}
            ) from None
        clean[name] = value
    return clean


def validate_env(env) -> dict:
    if not isinstance(env, dict):
        raise ValidationError({"env": "Give environment variables as a mapping."})
    clean = {}
    for name, value in env.items():
        if not ENV_NAME_RE.match(str(name)):
            raise ValidationError(
                {
                    "env": (
                        f"{name!r} is not a valid variable name: use capital letters, digits and _."
                    )
                }
            )
        if name in RESERVED_ENV:
            raise ValidationError({"env": f"{name} is set by Gantry and cannot be overridden."})
        if not ENV_VALUE_RE.match(str(value)):
            raise ValidationError(
                {
                    "env": (
                        f"The value of {name} may only hold letters, digits and _ . , : / @ + = -."
                    )
                }
            )
        clean[name] = str(value)
    return clean


def option_args(engine: str, options: dict) -> list[str]:
    args = []
    for name, value in sorted(options.items()):
        kind, _low, _high, flag = OPTIONS[engine][name]
        if kind is bool:
            if engine == "llama.cpp":
                args += [flag, "true" if value else "false"]
            elif value:
                args.append(flag)
        else:
            args += [flag, str(value)]
    return args


def base_image(engine: str) -> str:
    return settings.GANTRY_ENGINE_IMAGES[engine]


def spec_document(build) -> dict:
    """Everything the image is made from. Its hash names the spec."""
    return {
        "engine": build.engine,
        "engine_version": build.engine_version,
        "base_image": base_image(build.engine),
        "quantization": build.quantization,
        "max_context": build.max_context,
        "options": build.options,
        "args": option_args(build.engine, build.options),
        "env": build.env,
        "model": {
            "source": build.source_kind,
            "repo_id": build.repo_id,
            "revision": build.resolved_revision or build.revision,
            "architecture": build.facts.get("architecture", ""),
        },
    }


def spec_hash(spec: dict) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def _quote(value: str) -> str:
    # Values were validated against a narrow alphabet; JSON quoting is Dockerfile-safe.
    return json.dumps(str(value))


def image_env(spec: dict) -> dict[str, str]:
    return {
        "GANTRY_ENGINE": spec["engine"],
        "GANTRY_MAX_CONTEXT": str(spec["max_context"] or 0),
        **spec["env"],
    }


def image_labels(spec: dict, *, build_id: int, org: str, name: str) -> dict[str, str]:
    """The spec travels in the image as labels (readable with `docker inspect`), not as a
    file: a file would need a layer, and a layer needs a real build."""
    return {
        "io.gantry.spec": json.dumps(spec, sort_keys=True),
        "io.gantry.spec-hash": spec_hash(spec),
        "io.gantry.build": f"{org}/{name} (build {build_id})",
    }


def render_dockerfile(spec: dict, *, build_id: int, org: str, name: str) -> str:
    """What the image is, as a Dockerfile: the engine's base with validated values. No user
    text is pasted raw: values are JSON-quoted; the weights are not copied in. Only ENV and
    LABEL, so the image is made as a config over the base's layers (builder/images.py)."""
    env = image_env(spec)
    labels = image_labels(spec, build_id=build_id, org=org, name=name)
    env_lines = " \\\n    ".join(f"{k}={_quote(v)}" for k, v in sorted(env.items()))
    label_lines = " \\\n      ".join(f"{k}={_quote(v)}" for k, v in sorted(labels.items()))
    return (
        f"# Rendered by Gantry from a validated build spec (build {build_id}, {org}/{name}); "
        "edit the spec, not this file.\n"
        f"FROM {spec['base_image']}\n"
        f"ENV {env_lines}\n"
        f"LABEL {label_lines}\n"
    )
