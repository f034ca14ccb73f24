"""Tiny synthetic GGUF files (llama / qwen2, any storage type) written with gguf.GGUFWriter for tests."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import gguf
import numpy as np

from ferrumc.frontend.gguf import GGUF_NAMES, permute_rotary
from ferrumc.frontend.gguf_tokenizer import byte_alphabet

Q = gguf.GGMLQuantizationType

SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
# A byte-level vocabulary: the specials, the 256 byte characters, then what the merges build.
MERGES = ("h e", "l l", "he ll", "hell o", "Ġ w")


@dataclass(frozen=True)
class TinyGGUF:
    """What to write: the architecture, sizes, storage types and tokenizer metadata."""

    arch: str = "llama"
    hidden: int = 64
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    ffn: int = 128
    storage: Q = Q.F32  # for 2-D weights; norms stay F32 as llama.cpp writes them
    # Per-GGUF-name storage overrides (e.g. one Q5_K tensor).
    overrides: dict[str, Q] = field(default_factory=dict)
    tied: bool = True
    tokenizer: dict[str, object] = field(default_factory=dict)  # extra / replaced tokenizer keys
    skip: tuple[str, ...] = ()  # GGUF tensor names to leave out


def byte_level_tokens() -> list[str]:
    merged = ["".join(m.split(" ")) for m in MERGES]
    return [*SPECIALS, *byte_alphabet().values(), *merged]


def hf_weights(spec: TinyGGUF, vocab: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random weights in Hugging Face layout, under GGUF names (q/k not yet permuted)."""
    rng = np.random.default_rng(seed)
    d = spec.hidden // spec.heads
    q, kv, c = spec.heads * d, spec.kv_heads * d, spec.hidden
    shapes = {
        "token_embd.weight": (vocab, c),
        "output_norm.weight": (c,),
        "blk.{i}.attn_norm.weight": (c,),
        "blk.{i}.ffn_norm.weight": (c,),
        "blk.{i}.attn_q.weight": (q, c),
        "blk.{i}.attn_k.weight": (kv, c),
        "blk.{i}.attn_v.weight": (kv, c),
        "blk.{i}.attn_output.weight": (c, q),
        "blk.{i}.ffn_gate.weight": (spec.ffn, c),
        "blk.{i}.ffn_up.weight": (spec.ffn, c),
        "blk.{i}.ffn_down.weight": (c, spec.ffn),
    }
    if not spec.tied:
        shapes["output.weight"] = (vocab, c)
    if spec.arch == "qwen2":
        shapes |= {f"blk.{{i}}.attn_{p}.bias": ((q if p == "q" else kv),) for p in "qkv"}
    assert set(shapes) <= set(GGUF_NAMES), "tiny GGUF uses a name the frontend table lacks"
    out = {}
    for pattern, shape in shapes.items():
        for i in range(spec.layers) if "{i}" in pattern else [0]:
            out[pattern.format(i=i)] = rng.normal(0, 0.5, shape).astype(np.float32)
    return {k: v for k, v in out.items() if k not in spec.skip}


def _stored(name: str, w: np.ndarray, qtype: Q) -> tuple[np.ndarray, Q | None]:
    if w.ndim == 1 or qtype == Q.F32:
        return w, None
    if qtype == Q.F16:
        return w.astype(np.float16), None
    if qtype == Q.Q5_K:  # gguf cannot quantize K-quants; any bytes do for an unsupported type
        nbytes = gguf.quants.quant_shape_to_byte_shape(w.shape, qtype)
        return np.random.default_rng(1).integers(0, 255, nbytes, dtype=np.uint8), qtype
    return gguf.quants.quantize(w, qtype), qtype


def write_tiny_gguf(path: Path, spec: TinyGGUF = TinyGGUF()) -> dict[str, np.ndarray]:
    """Write the file; returns the HF-layout f32 weights (before quantization) by GGUF name."""
    tokens = byte_level_tokens()
    vocab = len(spec.tokenizer.get("tokenizer.ggml.tokens", tokens))  # type: ignore[arg-type]
    weights = hf_weights(spec, vocab)
    w = gguf.GGUFWriter(str(path), spec.arch)
    a = spec.arch
    w.add_uint32(f"{a}.block_count", spec.layers)
    w.add_uint32(f"{a}.context_length", 256)
    w.add_uint32(f"{a}.embedding_length", spec.hidden)
    w.add_uint32(f"{a}.feed_forward_length", spec.ffn)
    w.add_uint32(f"{a}.attention.head_count", spec.heads)
    w.add_uint32(f"{a}.attention.head_count_kv", spec.kv_heads)
    w.add_float32(f"{a}.rope.freq_base", 10000.0)
    w.add_float32(f"{a}.attention.layer_norm_rms_epsilon", 1e-6)
    w.add_uint32(f"{a}.rope.dimension_count", spec.hidden // spec.heads)
    meta: dict[str, object] = {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "default",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": [3] * len(SPECIALS) + [1] * (len(tokens) - len(SPECIALS)),
        "tokenizer.ggml.merges": list(MERGES),
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
    } | spec.tokenizer
    for key, value in meta.items():
        if isinstance(value, str):
            w.add_string(key, value)
        elif isinstance(value, bool):
            w.add_bool(key, value)
        elif isinstance(value, int):
            w.add_uint32(key, value)
        elif value is not None:
            w.add_array(key, value)  # type: ignore[arg-type]
    for name, hf in weights.items():
        # llama.cpp stores llama's q/k rows permuted for its interleaved rotary.
        heads = {"attn_q": spec.heads, "attn_k": spec.kv_heads}.get(name.split(".")[-2])
        raw = permute_rotary(hf, heads) if a == "llama" and heads else hf
        data, raw_dtype = _stored(name, raw, spec.overrides.get(name, spec.storage))
        w.add_tensor(name, data, raw_dtype=raw_dtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return weights


def rewrite_gguf(
    src: Path,
    dst: Path,
    tensors: dict[str, np.ndarray] | None = None,
    metadata: dict[str, object] | None = None,
) -> Path:
    """A copy of `src` at `dst` with extra tensors, and metadata replaced (same type) or added."""
    reader = gguf.GGUFReader(src)
    w = gguf.GGUFWriter(str(dst), str(reader.fields["general.architecture"].contents()))
    for key, f in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        value = (metadata or {}).get(key, f.contents())
        sub = f.types[-1] if f.types[0] == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(key, value, f.types[0], sub_type=sub)
    V = gguf.GGUFValueType
    for key, value in (metadata or {}).items():
        if key not in reader.fields:
            kind = {str: V.STRING, float: V.FLOAT32, int: V.UINT32, bool: V.BOOL}[type(value)]
            w.add_key_value(key, value, kind)
    for t in reader.tensors:
        w.add_tensor(t.name, np.array(t.data), raw_dtype=t.tensor_type)
    for name, data in (tensors or {}).items():
        w.add_tensor(name, data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return dst
