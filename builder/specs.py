"""Build specs: which engines serve an architecture, the options each engine takes
(validated values, never free text), and the Dockerfile rendered from them."""

import hashlib
import json
import re

from django.conf import settings
from django.core.exceptions import ValidationError

from deployments import flags

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
ENGINE_VERSIONS = flags.ENGINE_VERSIONS
QUANTIZATIONS = {
    "llama.cpp": ["as-file"],
    "vllm": ["bf16", "fp8", "awq-int4", "gptq-int4"],
    "sglang": ["bf16", "fp8"],
}

# A build's options are the engine's tenant flags (one schema, deployments.flags), named
# by their key: n_threads, max_num_seqs, tp_size…
OPTIONS = {engine: flags.schema_for(engine).by_key() for engine in flags.SCHEMAS}
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


def _range_text(flag: flags.Flag) -> str:
    if flag.kind is bool:
        return "true or false"
    if flag.choices:
        return f"one of {', '.join(flag.choices)}"
    whole = " (a whole number)" if flag.kind is int else ""
    return f"from {flag.low:g} to {flag.high:g}{whole}"


def validate_options(engine: str, options, version: str = "") -> dict:
    if not isinstance(options, dict):
        raise ValidationError({"options": "Give options as a mapping of name to value."})
    schema = flags.schema_for(engine, version) if engine in flags.SCHEMAS else None
    allowed = schema.by_key() if schema else {}
    clean = {}
    for name, value in options.items():
        flag, implied = schema.lookup(str(name)) if schema else (None, None)
        # Options are named by key with a typed value: no "--" spellings, no "no_" forms.
        if flag is None or implied is not None or str(name).startswith("-") or flag.key in clean:
            raise ValidationError(
                {
                    "options": (
                        f"{str(name)[:60]!r} is not an option of {engine}; allowed: "
                        + ", ".join(sorted(allowed))
                        + "."
                    )
                }
            )
        try:
            clean[flag.key] = flag.parse(value)
        except (TypeError, ValueError):
            raise ValidationError(
                {"options": f"{flag.key} must be {_range_text(flag)}; got {str(value)[:60]!r}."}
            ) from None
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


def option_args(engine: str, options: dict, version: str = "") -> list[str]:
    """The options as the engine's command-line flags (what deployments validate again)."""
    by_key = flags.schema_for(engine, version).by_key()
    return flags.render_args((by_key[name], value) for name, value in sorted(options.items()))


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
        "args": option_args(build.engine, build.options, build.engine_version),
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
