"""Will a profile fit its GPUs, and what does it cost?

Counted per GPU (per tensor-parallel rank), in GiB (2**30 bytes) the GPU really exposes:

  weights per rank = parameters × bytes per parameter of the quantization ÷ TP
  KV per rank      = KV bytes per token per rank × max context × sequences per copy
      grouped-query / multi-head: 2 (K and V) × layers × KV heads on the rank × head dim
          × KV bytes, where a rank holds ceil(KV heads ÷ TP) heads: when TP exceeds the KV
          heads, heads are replicated, each rank still holds one whole head;
      DeepSeek's multi-head latent attention (MLA): layers × (latent rank + rope dim)
          × KV bytes, the whole latent on every rank (it is not split by heads);
  engine allowance = activations and CUDA graphs per rank, per engine.

Each engine's memory fraction decides what must fit where:
  vLLM   ``--gpu-memory-utilization`` bounds everything it allocates (its profiling run
         counts activations and graphs): weights + KV + allowance ≤ usable × fraction;
  SGLang ``--mem-fraction-static`` bounds weights and the KV pool; activations and CUDA
         graphs live in the rest: weights + KV ≤ usable × fraction and allowance ≤
         usable × (1 − fraction);
  llama.cpp on a CPU slot: weights + KV + compute buffers ≤ slot memory × fraction.
"""

import math
from dataclasses import dataclass
from decimal import Decimal

from django.conf import settings

from billing.selectors import gpu_hour_cents

GIB = 2**30
MIB_PER_GIB = 1024

BYTES_PER_PARAM = {
    "f32": 4.0,
    "bf16": 2.0,
    "f16": 2.0,
    "fp8": 1.0,
    "int8": 1.0,
    "awq-int4": 0.5,
    "gptq-int4": 0.5,
    "q8_0": 8.5 / 8,  # GGUF Q8_0: 8-bit values plus a scale per block of 32
    "q4_k_m": 4.85 / 8,  # GGUF Q4_K_M averages about 4.85 bits per weight
}
ENGINE_ALLOWANCE_GIB = {"vllm": 2.0, "sglang": 2.0, "llama.cpp": 0.25}
# The CUDA context each process holds on every GPU before the engine allocates anything.
CUDA_CONTEXT_GIB = 0.5

# Memory each GPU type reports to the driver (nvidia-smi memory.total, or CUDA's
# totalGlobalMem), in GiB, with where the figure was read. Less than the marketing "GB".
GPU_REPORTED_GIB: dict[str, tuple[float, str]] = {
    "h100-80gb": (
        81559 / MIB_PER_GIB,
        "nvidia-smi memory.total 81559 MiB (H100 80GB HBM3; modal-labs/modal-client PR 2797)",
    ),
    "a100-80gb": (
        81920 / MIB_PER_GIB,
        "nvidia-smi memory.total 81920 MiB (A100 80GB; modal-labs/modal-client PR 2797)",
    ),
    "l40s-48gb": (
        46068 / MIB_PER_GIB,
        "nvidia-smi memory.total 46068 MiB (L40S; modal-labs/modal-client PR 2797)",
    ),
    "h200-141gb": (
        143771 / MIB_PER_GIB,
        "nvidia-smi memory.total 143771 MiB (H200 SXM, as printed in published nvidia-smi logs)",
    ),
    "b200-192gb": (
        178.35,
        "CUDA totalGlobalMem 178.35 GiB (B200 with ECC on; pytorch/ao PR 4002)",
    ),
}


@dataclass(frozen=True)
class Fit:
    """Per GPU (rank): what the profile needs against what the engine may use."""

    fits: bool
    weights_gib: float
    kv_cache_gib: float
    overhead_gib: float
    required_gib: float
    available_gib: float
    sentence: str
    tensor_parallel: int = 1
    usable_gib: float = 0.0

    @property
    def headroom_gib(self) -> float:
        return round(self.available_gib - self.required_gib, 2)


def kv_bytes_per_token(
    *,
    attention: str,
    num_layers: int,
    num_kv_heads: int,
    head_dim: int,
    kv_lora_rank: int = 0,
    qk_rope_head_dim: int = 0,
    tensor_parallel: int = 1,
    kv_bytes: int = 2,
) -> int:
    """KV cache bytes one token takes on one tensor-parallel rank."""
    if attention == "mla":
        return num_layers * (kv_lora_rank + qk_rope_head_dim) * kv_bytes
    heads = math.ceil(num_kv_heads / tensor_parallel)
    return 2 * num_layers * heads * head_dim * kv_bytes


def kv_dtype_bytes(kv_cache_dtype: str) -> int:
    return 1 if (kv_cache_dtype or "").startswith("fp8") else 2


def estimate(
    *,
    parameters_b: float,
    quantization: str,
    attention: str,
    num_layers: int,
    num_kv_heads: int,
    head_dim: int,
    max_model_len: int,
    concurrent_sequences: int,
    engine: str,
    gpu_memory_gib: float,
    gpu_count: int,
    utilization: float,
    tensor_parallel: int | None = None,
    kv_cache_dtype: str = "auto",
    kv_lora_rank: int = 0,
    qk_rope_head_dim: int = 0,
    gpu_label: str = "GPU",
) -> Fit:
    """``gpu_memory_gib`` is the usable memory of ONE GPU (see ``gpu_memory_gib()``)."""
    tp = tensor_parallel or gpu_count
    copies = max(1, gpu_count // tp)
    weights = float(parameters_b) * 1e9 * BYTES_PER_PARAM[quantization] / GIB / tp
    per_token = kv_bytes_per_token(
        attention=attention,
        num_layers=num_layers,
        num_kv_heads=num_kv_heads,
        head_dim=head_dim,
        kv_lora_rank=kv_lora_rank,
        qk_rope_head_dim=qk_rope_head_dim,
        tensor_parallel=tp,
        kv_bytes=kv_dtype_bytes(kv_cache_dtype),
    )
    seqs = math.ceil(concurrent_sequences / copies)
    kv = per_token * max_model_len * seqs / GIB
    allowance = ENGINE_ALLOWANCE_GIB.get(engine, 2.0)
    usable = float(gpu_memory_gib)
    fraction = float(utilization)
    if engine == "sglang":
        required = weights + kv
        available = usable * fraction
        fits = required <= available and allowance <= usable * (1 - fraction)
    else:
        required = weights + kv + allowance
        available = usable * fraction
        fits = required <= available
    replicated = ""
    if attention == "mla" and tp > 1:
        replicated = f", latent on each of {tp} ranks"
    elif attention != "mla" and tp > num_kv_heads:
        replicated = f", {num_kv_heads} KV heads replicated over {tp} ranks"
    parts = (
        f"weights {weights:,.1f} + KV cache {kv:,.1f} "
        f"({seqs}×{max_model_len:,} tokens{replicated}) + engine {allowance:,.2f}"
    )
    where = f"each of {gpu_count}×{gpu_label}" if gpu_count > 1 else f"1×{gpu_label}"
    where += f" ({usable:,.1f} GiB usable) at {fraction:.0%}"
    if engine == "sglang":
        outside = usable * (1 - fraction)
        parts += f" (engine outside the fraction: {outside:,.1f} GiB there)"
    total = required + (allowance if engine == "sglang" else 0)
    unit = "CPU slot" if engine == "llama.cpp" else "GPU"
    if fits:
        sentence = (
            f"Fits: needs {total:,.1f} GiB per {unit} ({parts}); {where} gives {available:,.1f}."
        )
    else:
        sentence = (
            f"Does not fit: needs {total:,.1f} GiB per {unit} ({parts}) but {where} gives "
            f"{available:,.1f}."
        )
    return Fit(
        fits,
        round(weights, 2),
        round(kv, 2),
        round(allowance, 2),
        round(required, 2),
        round(available, 2),
        sentence,
        tp,
        round(usable, 2),
    )


def gpu_memory_gib(gpu_type) -> float:
    """Usable GiB of one GPU of this type: what the driver reports, less the CUDA context.
    A type without a cited figure falls back to its nominal GB read as decimal."""
    if gpu_type.is_cpu:
        return float(settings.CPU_SLOT_MEMORY_GB)
    reported = GPU_REPORTED_GIB.get(gpu_type.code)
    total = reported[0] if reported else float(gpu_type.memory_gb) * 1e9 / GIB
    return round(total - CUDA_CONTEXT_GIB, 2)


def gpu_memory_source(gpu_type) -> str:
    if gpu_type.is_cpu:
        return "CPU_SLOT_MEMORY_GB (operator setting)"
    reported = GPU_REPORTED_GIB.get(gpu_type.code)
    return reported[1] if reported else f"nominal {gpu_type.memory_gb} GB (no reported figure)"


def profile_fit(profile) -> Fit:
    m = profile.model
    return estimate(
        parameters_b=float(m.parameters_b),
        quantization=profile.quantization,
        attention=m.attention,
        num_layers=m.num_layers,
        num_kv_heads=m.num_kv_heads,
        head_dim=m.head_dim,
        kv_lora_rank=m.kv_lora_rank,
        qk_rope_head_dim=m.qk_rope_head_dim,
        max_model_len=profile.max_model_len,
        concurrent_sequences=profile.concurrent_sequences,
        engine=profile.engine,
        gpu_memory_gib=gpu_memory_gib(profile.gpu_type),
        gpu_count=profile.gpu_count,
        tensor_parallel=profile.tensor_parallel or profile.gpu_count,
        kv_cache_dtype=profile.kv_cache_dtype,
        utilization=float(profile.gpu_memory_utilization),
        gpu_label="CPU slot" if profile.gpu_type.is_cpu else profile.gpu_type.name,
    )


def price_per_hour_cents(profile, prices: dict[str, int] | None = None) -> int:
    """Price per hour of one replica: the GPU-hour rate billing charges (its rate table,
    the one price) × GPUs per replica. `prices` (from ``gpu_hour_prices``) saves a query a
    profile on pages that list many."""
    code = profile.gpu_type.code
    cents = prices.get(code, 0) if prices is not None else gpu_hour_cents(code)
    return cents * profile.gpu_count


def format_price(cents: int) -> str:
    return f"${Decimal(cents) / 100:,.2f}/h"
