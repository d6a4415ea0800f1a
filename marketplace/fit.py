"""Will a model fit on a GPU type, and what does it cost?

memory needed = weights + KV cache + engine overhead
  weights  = parameters × bytes per parameter of the quantization
  KV cache = bytes per token × max context × concurrent sequences, where bytes per token is
             2 (K and V) × layers × KV heads × head dim × KV bytes for multi-head and
             grouped-query attention, and layers × (latent rank + rope dim) × KV bytes for
             DeepSeek's multi-head latent attention (MLA)
  overhead = a fixed allowance per GPU for the engine (CUDA graphs, activations)
memory available = GPU memory × GPU count × utilization (the engine's memory fraction)

GPU memory is counted in GiB (2**30 bytes), as the GPU-type table gives it.
"""

from dataclasses import dataclass
from decimal import Decimal

from django.conf import settings

from billing.selectors import gpu_hour_cents

GIB = 2**30

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
KV_BYTES = 2  # the KV cache is kept in 16-bit by default in every engine here
ENGINE_OVERHEAD_GIB = {"vllm": 2.0, "sglang": 2.0, "llama.cpp": 0.25}


@dataclass(frozen=True)
class Fit:
    fits: bool
    weights_gib: float
    kv_cache_gib: float
    overhead_gib: float
    required_gib: float
    available_gib: float
    sentence: str

    @property
    def headroom_gib(self) -> float:
        return self.available_gib - self.required_gib


def kv_bytes_per_token(
    *,
    attention: str,
    num_layers: int,
    num_kv_heads: int,
    head_dim: int,
    kv_lora_rank: int = 0,
    qk_rope_head_dim: int = 0,
) -> int:
    if attention == "mla":
        return num_layers * (kv_lora_rank + qk_rope_head_dim) * KV_BYTES
    return 2 * num_layers * num_kv_heads * head_dim * KV_BYTES


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
    kv_lora_rank: int = 0,
    qk_rope_head_dim: int = 0,
    gpu_label: str = "GPU",
) -> Fit:
    weights = float(parameters_b) * 1e9 * BYTES_PER_PARAM[quantization] / GIB
    per_token = kv_bytes_per_token(
        attention=attention,
        num_layers=num_layers,
        num_kv_heads=num_kv_heads,
        head_dim=head_dim,
        kv_lora_rank=kv_lora_rank,
        qk_rope_head_dim=qk_rope_head_dim,
    )
    kv = per_token * max_model_len * concurrent_sequences / GIB
    overhead = ENGINE_OVERHEAD_GIB.get(engine, 2.0) * gpu_count
    required = weights + kv + overhead
    available = float(gpu_memory_gib) * gpu_count * float(utilization)
    fits = required <= available
    parts = (
        f"weights {weights:,.1f} + KV cache {kv:,.1f} "
        f"({concurrent_sequences}×{max_model_len:,} tokens) + engine {overhead:,.1f}"
    )
    where = f"{gpu_count}×{gpu_label} at {float(utilization):.0%}"
    if fits:
        sentence = (
            f"Fits: needs {required:,.1f} GiB ({parts}) of {available:,.1f} GiB usable on {where}."
        )
    else:
        sentence = (
            f"Does not fit: needs {required:,.1f} GiB ({parts}) but {where} "
            f"has {available:,.1f} GiB usable."
        )
    return Fit(
        fits,
        round(weights, 2),
        round(kv, 2),
        round(overhead, 2),
        round(required, 2),
        round(available, 2),
        sentence,
    )


def gpu_memory_gib(gpu_type) -> float:
    if gpu_type.is_cpu:
        return float(settings.CPU_SLOT_MEMORY_GB)
    return float(gpu_type.memory_gb)


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
