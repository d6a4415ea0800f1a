"""What every driver starts for a replica: the engine's argv and the environment that
carries its secret.

Engines answer only the platform: each replica gets its own API key (see
``deployments.engine_auth``). Where the engine reads it from the environment it goes
there, never on the command line, where ``ps`` would show it to anyone on the node:
llama-cpp-python's server reads ``API_KEY`` (its settings are pydantic-settings, and a
flag left unset falls back to the variable) and vLLM reads ``VLLM_API_KEY``. SGLang takes
it only as ``--api-key``, so for SGLang it is in argv: readable by users with a shell on
the node (``/proc/<pid>/cmdline``) or access to its Docker or Kubernetes API — operators,
never tenants.

Gantry's own flags come after the tenant's, so where an engine's parser lets the last
occurrence win, Gantry's value wins; and a tenant flag that names or abbreviates one of
them (argparse accepts ``--hos`` for ``--host``) is refused here as a last guard, whatever
validation ran before.
"""

from dataclasses import dataclass, field

from deployments.drivers.base import DriverError, ReplicaSpec
from deployments.engine_auth import engine_api_key
from deployments.engines import engine_command

# Flags Gantry sets, by engine, in their canonical spelling (dashes).
_OWN_FLAGS = {
    "llama.cpp": {
        "host",
        "port",
        "model",
        "model-alias",
        "api-key",
        "config-file",
        "interrupt-requests",
    },
    "vllm": {"host", "port", "model", "served-model-name", "api-key", "uds"},
    "sglang": {"host", "port", "model-path", "served-model-name", "api-key"},
}
# The module each engine's command runs as (``python -m <module>``), and the entrypoints
# its published images declare: with one of those the container's command is only the
# arguments after it.
ENGINE_MODULES = {
    "llama.cpp": "llama_cpp.server",
    "vllm": "vllm.entrypoints.openai.api_server",
    "sglang": "sglang.launch_server",
}
VLLM_SERVE = ["vllm", "serve"]


@dataclass(frozen=True)
class Launch:
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)


def _refuse_own_flags(engine: str, args) -> None:
    own = _OWN_FLAGS.get(engine, set())
    for arg in args:
        if not arg.startswith("--"):
            continue
        name = arg[2:].split("=", 1)[0].replace("_", "-").lower()
        if name and any(flag.startswith(name) for flag in own):
            raise DriverError(f"engine flag {arg.split('=', 1)[0]} is set by Gantry")


def engine_launch(
    spec: ReplicaSpec, *, model_path: str, host: str, port: int, python: str = "python3"
) -> Launch:
    """The full command (``python -m <engine module> …``) and environment of a replica."""
    _refuse_own_flags(spec.engine, spec.engine_args)
    argv = engine_command(
        spec.engine,
        model_path=model_path,
        port=port,
        host=host,
        args=spec.engine_args,
        python=python,
    )
    key = engine_api_key(spec.replica_id)
    # The name clients (the gateway) ask for; the engine answers with it too, instead of
    # the file path it loaded (which would tell a tenant about the node's folders).
    name = spec.deployment_name
    if spec.engine == "llama.cpp":
        # llama-cpp-python's server, by default, ends the answer it is streaming when
        # another request arrives (its one model serves one request at a time): concurrent
        # clients got truncated answers. Off, they queue and each gets its whole answer.
        own = ["--model_alias", name, "--interrupt_requests", "False"]
        return Launch([*argv, *own], {"API_KEY": key})
    if spec.engine == "vllm":
        return Launch([*argv, "--served-model-name", name], {"VLLM_API_KEY": key})
    if spec.engine == "sglang":
        return Launch([*argv, "--served-model-name", name, "--api-key", key])
    raise DriverError(f"unknown engine {spec.engine!r}")


def container_command(launch: Launch, engine: str, entrypoint: list[str] | None) -> list[str]:
    """The command for a container whose image declares ``entrypoint``.

    An image made for the engine runs it from its ENTRYPOINT (vLLM's official image:
    ``vllm serve``; older ones ``python3 -m vllm.entrypoints.openai.api_server``), so the
    command is only the arguments — ``vllm serve`` takes the model as its first, positional
    argument. Any other entrypoint (none, or a wrapper that runs its arguments, like
    NVIDIA's ``nvidia_entrypoint.sh`` under SGLang's image) gets the whole command.
    """
    argv = list(launch.argv)
    module = ENGINE_MODULES.get(engine)
    # argv is [python, "-m", module, *rest]
    rest = argv[3:] if argv[1:3] == ["-m", module] else None
    entry = list(entrypoint or [])
    if rest is None or not entry:
        return argv
    if entry[-2:] == ["-m", module]:
        return rest
    if engine == "vllm" and [e.rsplit("/", 1)[-1] for e in entry[-2:]] == VLLM_SERVE:
        i = rest.index("--model")
        return [rest[i + 1], *rest[:i], *rest[i + 2 :]]
    return argv
