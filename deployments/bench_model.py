"""The bench model: a llama of a real shape (~120M parameters) with RANDOM weights, for
load tests.

Large enough that llama.cpp on a CPU is compute-bound (so engine settings and load change
its figures the way they would for a trained model of that size), small enough to write in
seconds. It was never trained: its answers are noise. Labelled so wherever it appears.
"""

import itertools
import os
import string
import uuid
from pathlib import Path

import numpy as np

from deployments.demo_model import CHAT_TEMPLATE

BENCH_MODEL_NAME = "gantry-bench-random-llama"
BENCH_MODEL_LABEL = "Bench llama, ~120M parameters (random weights, for load tests)"
BENCH_MODEL_FILE = "bench-random-llama-f16.gguf"

# A GQA llama: 12 layers of 768, 12 query heads over 4 KV heads, a 32k vocabulary.
N_VOCAB = 32000
N_EMBD = 768
N_LAYER = 12
N_HEAD = 12
N_HEAD_KV = 4
N_FF = 2048
N_CTX = 4096

# Common short English words, each one whole piece, so that prompts made of them
# (lab.loadgen.WORDS is drawn from the same kind of words) tokenize one word to one token.
COMMON_WORDS = " ".join(
    (
        "the of and to in is for on that with as it by at from this be or are an was have not",
        "but all can one which their has more will other about time new some these would when",
        "use two may first any work also there like over people most only year into just make",
        "well made such find back good way could then know need part many where much each long",
        "day since very place right help between through high same little world under both show",
        "life small side last point city water home house state name line end level group",
        "number system order case week market family team road game land light body",
    )
).split()


def parameter_count() -> int:
    head_dim = N_EMBD // N_HEAD
    attn = 2 * N_EMBD * N_EMBD + 2 * N_EMBD * N_HEAD_KV * head_dim
    per_layer = attn + 3 * N_EMBD * N_FF + 2 * N_EMBD
    return 2 * N_VOCAB * N_EMBD + N_LAYER * per_layer + N_EMBD


def _vocab() -> tuple[list[bytes], list[float], list[int]]:
    from gguf import TokenType

    tokens: list[bytes] = [b"<unk>", b"<s>", b"</s>"]
    scores: list[float] = [0.0, 0.0, 0.0]
    types: list[int] = [TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL]
    for b in range(256):
        tokens.append(f"<0x{b:02X}>".encode())
        scores.append(0.0)
        types.append(TokenType.BYTE)
    seen = set()

    def add(piece: str, score: float) -> None:
        if piece not in seen and len(tokens) < N_VOCAB:
            seen.add(piece)
            tokens.append(piece.encode())
            scores.append(score)
            types.append(TokenType.NORMAL)

    # Whole words score highest, so SentencePiece-style merging picks them over letters.
    for word in COMMON_WORDS:
        add("▁" + word, 0.0)
    add("▁", -1.0)
    letters = string.ascii_lowercase
    for n in (1, 2, 3):
        for combo in itertools.product(letters, repeat=n):
            piece = "".join(combo)
            add("▁" + piece, -float(n) - 1)
            add(piece, -float(n) - 2)
    return tokens, scores, types


def write_bench_gguf(path: Path, seed: int = 0) -> Path:
    """Write the bench model to ``path`` (idempotent: an existing file is kept)."""
    import gguf

    path = Path(path)
    if path.exists() and path.stat().st_size > 0:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    rng = np.random.default_rng(seed)
    tokens, scores, types = _vocab()
    head_dim = N_EMBD // N_HEAD

    w = gguf.GGUFWriter(str(tmp), "llama")
    w.add_name(BENCH_MODEL_NAME)
    w.add_description(BENCH_MODEL_LABEL)
    w.add_context_length(N_CTX)
    w.add_embedding_length(N_EMBD)
    w.add_block_count(N_LAYER)
    w.add_feed_forward_length(N_FF)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_HEAD_KV)
    w.add_rope_dimension_count(head_dim)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_chat_template(CHAT_TEMPLATE)

    def t(name: str, *shape: int) -> None:
        w.add_tensor(name, (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float16))

    def ones(name: str) -> None:
        # Norm weights stay F32, as llama.cpp's own converters write them.
        w.add_tensor(name, np.ones(N_EMBD, dtype=np.float32))

    t("token_embd.weight", len(tokens), N_EMBD)
    for i in range(N_LAYER):
        ones(f"blk.{i}.attn_norm.weight")
        t(f"blk.{i}.attn_q.weight", N_EMBD, N_EMBD)
        t(f"blk.{i}.attn_k.weight", N_HEAD_KV * head_dim, N_EMBD)
        t(f"blk.{i}.attn_v.weight", N_HEAD_KV * head_dim, N_EMBD)
        t(f"blk.{i}.attn_output.weight", N_EMBD, N_EMBD)
        ones(f"blk.{i}.ffn_norm.weight")
        t(f"blk.{i}.ffn_gate.weight", N_FF, N_EMBD)
        t(f"blk.{i}.ffn_up.weight", N_FF, N_EMBD)
        t(f"blk.{i}.ffn_down.weight", N_EMBD, N_FF)
    ones("output_norm.weight")
    t("output.weight", len(tokens), N_EMBD)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    os.replace(tmp, path)
    return path
