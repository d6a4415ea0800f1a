"""Engine stand-ins for paths this machine cannot run for real (no GPU): see standin/."""

from pathlib import Path

STANDIN_DIR = Path(__file__).parent / "standin"
VLLM_STANDIN_IMAGE = "gantry/vllm-standin:1"
BASE_IMAGE = "gantry/bookworm-python:1"


def build_vllm_standin(client) -> str:
    """Build the stand-in vLLM image from the local base (no pulls); Docker's layer cache
    makes a second build instant. Returns the image name."""
    client.images.build(
        path=str(STANDIN_DIR),
        tag=VLLM_STANDIN_IMAGE,
        buildargs={"BASE": BASE_IMAGE},
        network_mode="host",
        pull=False,
        rm=True,
    )
    return VLLM_STANDIN_IMAGE
