"""The engine flag schema: exact names, typed values, the engine's own spelling out."""

import pytest
from django.core.exceptions import ValidationError

from builder import specs
from deployments import flags
from deployments.flags import parse_engine_args, schema_for, validate_engine_args


def _error(engine: str, args) -> str:
    with pytest.raises(ValidationError) as exc:
        validate_engine_args(engine, args)
    assert list(exc.value.message_dict) == ["engine_args"]
    return " ".join(exc.value.message_dict["engine_args"])


def test_both_spellings_and_both_forms_give_the_engines_own_argv():
    args = ["--n-threads=4", "--n_batch", "256", "--flash-attn", "true", "--n_ctx=0"]
    assert validate_engine_args("llama.cpp", args) == [
        "--n_threads",
        "4",
        "--n_batch",
        "256",
        "--flash_attn",
        "true",
        "--n_ctx",
        "0",
    ]
    assert validate_engine_args("vllm", ["--max_num_seqs=8", "--enable-prefix-caching"]) == [
        "--max-num-seqs",
        "8",
        "--enable-prefix-caching",
    ]
    assert validate_engine_args("vllm", ["--enable-prefix-caching", "false"]) == [
        "--no-enable-prefix-caching"
    ]
    assert validate_engine_args("vllm", ["--no-enable-prefix-caching"]) == [
        "--no-enable-prefix-caching"
    ]
    # SGLang's aliases are exact names too; a switch set to false is left out.
    assert validate_engine_args("sglang", ["--tp", "2", "--disable-radix-cache=false"]) == [
        "--tp-size",
        "2",
    ]


def test_rendered_argv_parses_back_to_the_same_pairs():
    for engine in flags.SCHEMAS:
        schema = schema_for(engine)
        for flag in schema.flags:
            if flag.kind is bool:
                samples = [True, False]
            elif flag.choices:
                samples = [flag.kind(flag.choices[-1])]
            else:
                samples = [flag.kind(flag.low), flag.kind(flag.high)]
            for value in samples:
                argv = flag.render(value)
                pairs = parse_engine_args(engine, argv)
                assert [(f.name, v) for f, v in pairs] == ([] if not argv else [(flag.name, value)])


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--hos=0.0.0.0"], "'--hos' is not a flag tenants may set on llama.cpp 0.3.36"),
        (["--host", "0.0.0.0"], "'--host' is set by Gantry"),
        (["--port=1"], "'--port' is set by Gantry"),
        (["--api_key", "x"], "'--api_key' is set by Gantry"),
        (["--api-key=x"], "'--api-key' is set by Gantry"),
        (["--model", "/etc/passwd"], "'--model' is set by Gantry"),
        (["--lora_path", "/srv/a.bin"], "'--lora_path' is set by Gantry"),
        (["--config_file=/etc/passwd"], "'--config_file' is set by Gantry"),
        (["--trust-remote-code"], "'--trust-remote-code' is not a flag tenants may set"),
        (["--N_THREADS", "2"], "'--N_THREADS' is not a flag tenants may set"),
        (["--n_thread", "2"], "'--n_thread' is not a flag"),
        (["--n", "2"], "'--n' is not a flag"),
        (["--", "2"], "'--' is not a flag"),
        (["--cache_type", "disk"], "'disk' is not allowed for --cache_type: give one of ram"),
        (["--chat_format", "/etc/passwd"], "is not allowed for --chat_format: give one of"),
        (["--chat_format=../t.jinja"], "is not allowed for --chat_format"),
        (["--n_threads=abc"], "'abc' is not allowed for --n_threads: give a whole number"),
        (["--n_threads=-1"], "'-1' is not allowed for --n_threads: give a whole number from 1"),
        (["--n_threads", "-1"], "'-1' is not allowed for --n_threads"),
        (["--n_threads", "99999999999999999999"], "is not allowed for --n_threads"),
        (["--n_threads", "257"], "from 1 to 256"),
        (["--n_threads", "2.5"], "is not allowed for --n_threads"),
        (["--n_threads"], "--n_threads needs a value: a whole number from 1 to 256"),
        (["--n_threads", "--n_batch", "8"], "--n_threads needs a value"),
        (["--flash_attn"], "--flash_attn needs a value: true or false"),
        (["--flash_attn", "yes"], "'yes' is not allowed for --flash_attn: give true or false"),
        (["--n_threads=2", "--n-threads=3"], "--n_threads is given twice"),
        (["0.0.0.0"], "'0.0.0.0' is not a flag: write --name value or --name=value"),
        (["-h"], "'-h' is not a flag"),
        (["--n_ctx", "1; rm -rf /"], "is not allowed for --n_ctx"),
        (["--n_threads", "x" * 100_000], "at most 200 characters"),
        (["--n_ctx", "512"] * 21, "At most 40 arguments"),
        ("--n_ctx 512", "Give a list of strings"),
        ({"--n_ctx": 512}, "Give a list of strings"),
        ([512], "Give a list of strings"),
    ],
)
def test_attacks_on_llamacpp_flags_are_refused_with_the_field_named(args, words):
    message = _error("llama.cpp", args)
    assert words in message, message
    assert "x" * 200 not in message  # a huge argument is never echoed whole


def test_a_refusal_lists_the_flags_that_are_allowed():
    message = _error("llama.cpp", ["--hos=0.0.0.0"])
    allowed = message.split("allowed: ", 1)[1]
    assert "--n_threads" in allowed and "--flash_attn" in allowed
    assert "--host" not in allowed and "--port" not in allowed and "--model" not in allowed


@pytest.mark.parametrize(
    ("engine", "args", "words"),
    [
        ("vllm", ["--trust-remote-code"], "'--trust-remote-code' is set by Gantry"),
        ("vllm", ["--trust_remote_code=true"], "is set by Gantry"),
        ("vllm", ["--download-dir", "/"], "is set by Gantry"),
        ("vllm", ["--chat-template", "/etc/passwd"], "is set by Gantry"),
        ("vllm", ["--gpu-memory-utilization", "1.5"], "a number from 0.1 to 0.99"),
        ("vllm", ["--gpu-memory-utilization", "nan"], "is not allowed"),
        ("vllm", ["--kv-cache-dtype", "fp4"], "give one of auto, fp8"),
        ("vllm", ["--enable-prefix"], "'--enable-prefix' is not a flag tenants may set"),
        ("vllm", ["--no-max-num-seqs"], "is not a flag tenants may set"),
        ("vllm", ["--no-enable-prefix-caching=true"], "takes no value"),
        ("sglang", ["--mem-fraction-static", "0"], "is not allowed"),
        ("sglang", ["--tp", "2", "--tp-size", "2"], "--tp-size is given twice"),
        ("sglang", ["--model-path", "/etc"], "is set by Gantry"),
    ],
)
def test_attacks_on_vllm_and_sglang_flags_are_refused(engine, args, words):
    assert words in _error(engine, args)


def test_every_flag_has_a_type_a_range_or_choices_and_help():
    for engine, versions in flags.SCHEMAS.items():
        for version, schema in versions.items():
            assert schema.engine == engine and schema.version == version
            keys = [f.key for f in schema.flags]
            assert len(keys) == len(set(keys)), f"{engine} names a flag twice"
            for f in schema.flags:
                assert f.name.startswith("--") and f.help
                assert f.key not in schema.reserved
                if f.kind in (int, float) and not f.choices:
                    assert f.low is not None and f.high is not None and f.low <= f.high
    assert any(f.tunable for f in schema_for("vllm").flags)


def test_an_unknown_engine_version_is_refused_on_its_field():
    with pytest.raises(ValidationError) as exc:
        parse_engine_args("vllm", [], version="0.1")
    assert "0.11.0" in exc.value.message_dict["engine_version"][0]


def test_the_builder_options_are_the_same_schema():
    assert set(specs.OPTIONS["llama.cpp"]) == {f.key for f in schema_for("llama.cpp").flags}
    options = specs.validate_options("vllm", {"max_num_seqs": 8, "enable-prefix-caching": True})
    assert options == {"max_num_seqs": 8, "enable_prefix_caching": True}
    assert specs.option_args("vllm", options) == [
        "--enable-prefix-caching",
        "--max-num-seqs",
        "8",
    ]
    # What a build hands to a deployment passes the deployment's own check unchanged.
    argv = specs.option_args("vllm", options)
    assert validate_engine_args("vllm", argv) == argv
    for bad in ({"host": "0.0.0.0"}, {"trust_remote_code": True}, {"--n_threads": 2}):
        with pytest.raises(ValidationError, match="not an option of"):
            specs.validate_options("llama.cpp", bad)
    for bad in ({"no_enable_prefix_caching": True}, {"max_num_seqs": 8, "max-num-seqs": 8}):
        with pytest.raises(ValidationError, match="not an option of"):
            specs.validate_options("vllm", bad)
    with pytest.raises(ValidationError, match="n_threads must be from 1 to 256"):
        specs.validate_options("llama.cpp", {"n_threads": True})


def test_the_schema_is_published_for_the_api_and_the_lab():
    doc = flags.schema_document("llama.cpp")
    n_threads = next(f for f in doc if f["name"] == "--n_threads")
    assert n_threads == {
        "name": "--n_threads",
        "type": "int",
        "min": 1,
        "max": 256,
        "choices": [],
        "help": "Threads for generation.",
        "tunable": True,
        "aliases": [],
    }
