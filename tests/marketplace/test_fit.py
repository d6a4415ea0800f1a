"""The per-GPU fit against cases worked out by hand."""

import pytest

from deployments.gpu_types import ensure_gpu_types
from deployments.models import GpuType
from marketplace.fit import GIB, estimate, gpu_memory_gib, kv_bytes_per_token

R1 = {
    "parameters_b": 671,
    "attention": "mla",
    "num_layers": 61,
    "num_kv_heads": 128,
    "head_dim": 192,
    "kv_lora_rank": 512,
    "qk_rope_head_dim": 64,
}


@pytest.mark.django_db
def test_usable_memory_is_what_the_driver_reports_less_the_cuda_context():
    ensure_gpu_types()
    usable = {g.code: gpu_memory_gib(g) for g in GpuType.objects.exclude(code="cpu")}
    # nvidia-smi MiB / 1024 − 0.5 GiB of CUDA context; never the marketing "GB".
    assert usable == {
        "h100-80gb": pytest.approx(81559 / 1024 - 0.5, abs=0.01),  # 79.15
        "a100-80gb": pytest.approx(79.5),
        "l40s-48gb": pytest.approx(46068 / 1024 - 0.5, abs=0.01),  # 44.49
        "h200-141gb": pytest.approx(143771 / 1024 - 0.5, abs=0.01),  # 139.90
        "b200-192gb": pytest.approx(177.85),
    }


def test_deepseek_r1_on_8_h200_keeps_the_whole_mla_latent_on_every_rank():
    # The latent (512) + rope key (64) per layer is not split by tensor parallelism.
    per_token = kv_bytes_per_token(**{k: R1[k] for k in R1 if k != "parameters_b"})
    assert per_token == 61 * (512 + 64) * 2 == 70_272
    assert per_token == kv_bytes_per_token(
        **{k: R1[k] for k in R1 if k != "parameters_b"}, tensor_parallel=8
    )
    fit = estimate(
        **R1,
        quantization="fp8",
        max_model_len=65536,
        concurrent_sequences=8,
        engine="sglang",
        gpu_memory_gib=139.90,
        gpu_count=8,
        utilization=0.90,
        gpu_label="H200 141GB",
    )
    # weights: 671e9 B ÷ 2^30 = 624.92 GiB ÷ 8 ranks = 78.11 GiB per GPU.
    assert fit.weights_gib == pytest.approx(78.11, abs=0.01)
    # KV: 70,272 B × 65,536 × 8 sequences = 36,842,766,336 B = 34.3125 GiB on EVERY GPU.
    assert fit.kv_cache_gib == pytest.approx(34.31, abs=0.01)
    # SGLang: weights + KV within --mem-fraction-static 0.90 of 139.90 = 125.91 GiB.
    assert fit.required_gib == pytest.approx(112.43, abs=0.01)
    assert fit.available_gib == pytest.approx(125.91, abs=0.01)
    assert fit.fits and fit.headroom_gib == pytest.approx(13.48, abs=0.02)
    assert fit.tensor_parallel == 8
    assert "latent on each of 8 ranks" in fit.sentence
    # On 8×H100 the weights' share alone (78.1) exceeds what vLLM may use (0.9 × 79.15).
    on_h100 = estimate(
        **R1,
        quantization="fp8",
        max_model_len=32768,
        concurrent_sequences=4,
        engine="vllm",
        gpu_memory_gib=79.15,
        gpu_count=8,
        utilization=0.90,
        gpu_label="H100 80GB",
    )
    assert not on_h100.fits
    assert on_h100.required_gib == pytest.approx(78.11 + 8.58 + 2.0, abs=0.02)
    assert on_h100.sentence.startswith("Does not fit: needs 88.7 GiB per GPU")


def test_qwen3_235b_on_8_h100_replicates_its_4_kv_heads_over_8_ranks():
    gqa = {"attention": "gqa", "num_layers": 94, "num_kv_heads": 4, "head_dim": 128}
    # TP 8 > 4 KV heads: each rank still holds one whole head (2 × 94 × 1 × 128 × 2 B).
    assert kv_bytes_per_token(**gqa, tensor_parallel=8) == 48_128
    assert kv_bytes_per_token(**gqa, tensor_parallel=4) == 48_128
    assert kv_bytes_per_token(**gqa, tensor_parallel=2) == 96_256
    fit = estimate(
        parameters_b=235.09,
        quantization="fp8",
        **gqa,
        max_model_len=40960,
        concurrent_sequences=8,
        engine="vllm",
        gpu_memory_gib=79.15,
        gpu_count=8,
        utilization=0.90,
        gpu_label="H100 80GB",
    )
    # weights: 235.09e9 B = 218.94 GiB ÷ 8 = 27.37 GiB.
    assert fit.weights_gib == pytest.approx(27.37, abs=0.01)
    # KV: 48,128 B × 40,960 × 8 = 15,770,583,040 B = 14.6875 GiB (7.34 if heads were split).
    assert fit.kv_cache_gib == pytest.approx(14.69, abs=0.01)
    # vLLM: weights + KV + 2 GiB allowance within 0.90 × 79.15 = 71.235 GiB.
    assert fit.required_gib == pytest.approx(44.06, abs=0.01)
    assert fit.available_gib == pytest.approx(71.23, abs=0.01)
    assert fit.fits and "4 KV heads replicated over 8 ranks" in fit.sentence


def test_a_cpu_gguf_profile_counts_its_quant_file_and_the_slot():
    fit = estimate(
        parameters_b=7.62,
        quantization="q4_k_m",
        attention="gqa",
        num_layers=28,
        num_kv_heads=4,
        head_dim=128,
        max_model_len=8192,
        concurrent_sequences=1,
        engine="llama.cpp",
        gpu_memory_gib=16,
        gpu_count=1,
        utilization=0.90,
        gpu_label="CPU slot",
    )
    # weights: 7.62e9 × 4.85 bits ÷ 8 = 4,619,625,000 B = 4.30 GiB.
    assert fit.weights_gib == pytest.approx(4.30, abs=0.01)
    # KV: 2 × 28 × 4 × 128 × 2 B = 57,344 B × 8,192 tokens = 0.4375 GiB.
    assert 57_344 * 8192 / GIB == 0.4375 and fit.kv_cache_gib == pytest.approx(0.44, abs=0.01)
    assert fit.overhead_gib == 0.25
    assert fit.required_gib == pytest.approx(4.99, abs=0.01)
    assert fit.available_gib == pytest.approx(14.4)
    assert fit.fits and fit.sentence.startswith("Fits: needs 5.0 GiB per CPU slot")


def test_sglang_needs_room_outside_its_static_fraction():
    squeezed = estimate(
        parameters_b=8,
        quantization="bf16",
        attention="gqa",
        num_layers=32,
        num_kv_heads=8,
        head_dim=128,
        max_model_len=4096,
        concurrent_sequences=1,
        engine="sglang",
        gpu_memory_gib=44.49,
        gpu_count=1,
        utilization=0.99,  # leaves 0.44 GiB for activations and CUDA graphs: too little
    )
    assert squeezed.required_gib < squeezed.available_gib and not squeezed.fits
