"""The fit calculation against cases worked out by hand."""

import pytest

from marketplace.fit import GIB, estimate, kv_bytes_per_token


def test_dense_multi_head_model_hand_computed():
    # 7B, bf16, 32 layers × 32 heads (every head has its own K and V), head dim 128.
    fit = estimate(
        parameters_b=7,
        quantization="bf16",
        attention="mha",
        num_layers=32,
        num_kv_heads=32,
        head_dim=128,
        max_model_len=4096,
        concurrent_sequences=1,
        engine="vllm",
        gpu_memory_gib=80,
        gpu_count=1,
        utilization=0.9,
    )
    # weights: 7e9 × 2 B = 14e9 B = 13.04 GiB
    assert fit.weights_gib == pytest.approx(14e9 / GIB, abs=0.01)
    # KV: 2 × 32 × 32 × 128 × 2 B = 524,288 B (0.5 MiB) per token × 4,096 tokens = 2 GiB
    assert (
        kv_bytes_per_token(attention="mha", num_layers=32, num_kv_heads=32, head_dim=128) == 524_288
    )
    assert fit.kv_cache_gib == 2.0
    assert fit.overhead_gib == 2.0
    assert fit.required_gib == pytest.approx(17.04, abs=0.01)
    assert fit.available_gib == 72.0 and fit.fits
    assert fit.sentence.startswith("Fits: needs 17.0 GiB")


def test_grouped_query_model_hand_computed():
    # Llama 3.1 70B in FP8 on one H200: 80 layers, 8 KV heads of 128.
    fit = estimate(
        parameters_b=70.55,
        quantization="fp8",
        attention="gqa",
        num_layers=80,
        num_kv_heads=8,
        head_dim=128,
        max_model_len=32768,
        concurrent_sequences=2,
        engine="vllm",
        gpu_memory_gib=141,
        gpu_count=1,
        utilization=0.9,
        gpu_label="H200 141GB",
    )
    # weights: 70.55e9 × 1 B = 65.70 GiB; KV: 2 × 80 × 8 × 128 × 2 = 327,680 B per token,
    # × 32,768 × 2 sequences = 21,474,836,480 B = 20 GiB exactly.
    assert fit.weights_gib == pytest.approx(65.70, abs=0.01)
    assert fit.kv_cache_gib == 20.0
    assert fit.required_gib == pytest.approx(87.70, abs=0.01)
    assert fit.available_gib == pytest.approx(126.9)
    assert fit.fits
    assert "on 1×H200 141GB at 90%" in fit.sentence


def test_mla_mixture_of_experts_model_hand_computed():
    # DeepSeek R1: all 671B parameters are held (MoE), FP8; MLA caches a 512-wide latent
    # plus a 64-wide rope key per layer instead of per-head K and V.
    per_token = kv_bytes_per_token(
        attention="mla",
        num_layers=61,
        num_kv_heads=128,
        head_dim=192,
        kv_lora_rank=512,
        qk_rope_head_dim=64,
    )
    assert per_token == 61 * (512 + 64) * 2 == 70_272  # vs 2×61×128×192×2 = 5,996,544 for MHA
    fit = estimate(
        parameters_b=671,
        quantization="fp8",
        attention="mla",
        num_layers=61,
        num_kv_heads=128,
        head_dim=192,
        kv_lora_rank=512,
        qk_rope_head_dim=64,
        max_model_len=32768,
        concurrent_sequences=4,
        engine="vllm",
        gpu_memory_gib=80,
        gpu_count=8,
        utilization=0.9,
        gpu_label="H100 80GB",
    )
    assert fit.weights_gib == pytest.approx(624.93, abs=0.01)  # 671e9 B
    assert fit.kv_cache_gib == pytest.approx(8.58, abs=0.01)  # 70,272 × 32,768 × 4 B
    assert fit.overhead_gib == 16.0  # 2 GiB on each of 8 GPUs
    assert fit.required_gib == pytest.approx(649.51, abs=0.01)
    assert fit.available_gib == 576.0 and not fit.fits
    assert fit.sentence.startswith("Does not fit: needs 649.5 GiB")
    on_h200 = estimate(
        parameters_b=671,
        quantization="fp8",
        attention="mla",
        num_layers=61,
        num_kv_heads=128,
        head_dim=192,
        kv_lora_rank=512,
        qk_rope_head_dim=64,
        max_model_len=32768,
        concurrent_sequences=4,
        engine="vllm",
        gpu_memory_gib=141,
        gpu_count=8,
        utilization=0.9,
    )
    assert on_h200.fits and on_h200.available_gib == pytest.approx(1015.2)
