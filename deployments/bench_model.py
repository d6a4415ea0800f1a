"""The bench model: a llama of a real shape (~120M parameters) with RANDOM weights, for
load tests.

Large enough that llama.cpp on a CPU is compute-bound (so engine settings and load change
its figures the way they would for a trained model of that size), small enough to write in
seconds. It was never trained: its answers are noise. Labelled so wherever it appears.
"""

import itertools
import string
from pathlib import Path

from deployments.demo_model import write_random_llama

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
    return write_random_llama(
        path,
        seed=seed,
        name=BENCH_MODEL_NAME,
        label=BENCH_MODEL_LABEL,
        vocab=_vocab(),
        embd=N_EMBD,
        layers=N_LAYER,
        ff=N_FF,
        heads=(N_HEAD, N_HEAD_KV),
        ctx=N_CTX,
        f16=True,
    )
