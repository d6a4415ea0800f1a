"""The demo model: a tiny llama with RANDOM weights, written as GGUF.

It exists so that the whole path — deploy, place, start a real llama.cpp server,
route, complete, meter — runs on any CPU in seconds. Its answers are noise: it was never
trained. It is labelled as such everywhere it appears.
"""

import os
import uuid
from pathlib import Path

import numpy as np

DEMO_MODEL_NAME = "gantry-tiny-random-llama"
DEMO_MODEL_LABEL = "Tiny random-weight llama (demo, untrained — output is noise)"

# Shape: small enough to be a few hundred KB, shaped like a real GQA llama.
N_EMBD = 64
N_LAYER = 2
N_HEAD = 4
N_HEAD_KV = 2
N_FF = 128
N_CTX = 512

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def _vocab() -> tuple[list[bytes], list[float], list[int]]:
    from gguf import TokenType

    tokens: list[bytes] = [b"<unk>", b"<s>", b"</s>"]
    scores: list[float] = [0.0, 0.0, 0.0]
    types: list[int] = [TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL]
    # Byte fallback: every byte is a token, so any text can be tokenized.
    for b in range(256):
        tokens.append(f"<0x{b:02X}>".encode())
        scores.append(0.0)
        types.append(TokenType.BYTE)
    # A few whole pieces, as a SentencePiece vocabulary would have.
    pieces = ["▁", "▁the", "▁a", "▁hello", "▁world", "▁Gantry", "e", "t", "a", "o", "n"]
    for i, piece in enumerate(pieces):
        tokens.append(piece.encode())
        scores.append(-float(i + 1))
        types.append(TokenType.NORMAL)
    return tokens, scores, types


def write_demo_gguf(
    path: Path,
    seed: int = 0,
    *,
    embd: int = N_EMBD,
    layers: int = N_LAYER,
    ff: int = N_FF,
    ctx: int = N_CTX,
) -> Path:
    """Write the demo model to ``path`` (idempotent: an existing file is kept). A larger
    shape (benchmarks: prompts that take a CPU measurable time to read) is the same random
    llama, bigger."""
    return write_random_llama(
        path,
        seed=seed,
        name=DEMO_MODEL_NAME,
        label=DEMO_MODEL_LABEL,
        vocab=_vocab(),
        embd=embd,
        layers=layers,
        ff=ff,
        heads=(N_HEAD, N_HEAD_KV),
        ctx=ctx,
    )


def write_random_llama(
    path: Path,
    *,
    seed: int,
    name: str,
    label: str,
    vocab: tuple[list[bytes], list[float], list[int]],
    embd: int,
    layers: int,
    ff: int,
    heads: tuple[int, int],
    ctx: int,
    f16: bool = False,
) -> Path:
    """A llama of the given shape with random weights (N(0, 0.02)), as GGUF; F32 weights,
    or F16 with the norms kept F32 as llama.cpp's own converters write them. Idempotent:
    an existing file is kept."""
    import gguf

    path = Path(path)
    if path.exists() and path.stat().st_size > 0:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    # Unique per writer: concurrent first starts each write their own, then one wins.
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    rng = np.random.default_rng(seed)
    tokens, scores, types = vocab
    n_vocab = len(tokens)
    n_head, n_head_kv = heads
    head_dim = embd // n_head

    w = gguf.GGUFWriter(str(tmp), "llama")
    w.add_name(name)
    w.add_description(label)
    w.add_context_length(ctx)
    w.add_embedding_length(embd)
    w.add_block_count(layers)
    w.add_feed_forward_length(ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_rope_dimension_count(head_dim)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if f16 else gguf.LlamaFileType.ALL_F32)
    w.add_vocab_size(n_vocab)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_chat_template(CHAT_TEMPLATE)

    def t(name: str, *shape: int) -> None:
        if f16:
            weights = rng.standard_normal(shape, dtype=np.float32) * 0.02
            w.add_tensor(name, weights.astype(np.float16))
        else:
            w.add_tensor(name, (rng.standard_normal(shape) * 0.02).astype(np.float32))

    def ones(name: str) -> None:
        w.add_tensor(name, np.ones(embd, dtype=np.float32))

    t("token_embd.weight", n_vocab, embd)
    for i in range(layers):
        ones(f"blk.{i}.attn_norm.weight")
        t(f"blk.{i}.attn_q.weight", embd, embd)
        t(f"blk.{i}.attn_k.weight", n_head_kv * head_dim, embd)
        t(f"blk.{i}.attn_v.weight", n_head_kv * head_dim, embd)
        t(f"blk.{i}.attn_output.weight", embd, embd)
        ones(f"blk.{i}.ffn_norm.weight")
        t(f"blk.{i}.ffn_gate.weight", ff, embd)
        t(f"blk.{i}.ffn_up.weight", ff, embd)
        t(f"blk.{i}.ffn_down.weight", embd, ff)
    ones("output_norm.weight")
    t("output.weight", n_vocab, embd)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    os.replace(tmp, path)
    return path
