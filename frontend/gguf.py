"""Load a GGUF checkpoint (llama, qwen2) into a LoadedModel: config, lazily dequantized weights, tokenizer."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..errors import CheckpointError, UnsupportedModel
from ..ir.int4 import Int4Format
from ..ir.rope import RopeScaling, inv_freq
from ..ir.types import DType, TensorType
from .config import DecoderConfig
from .gguf_int4 import GROUP, INT4_TYPES, Q, q4_qweight, q4_scales, q4_zeros
from .gguf_reader import GGUFFile
from .gguf_tokenizer import load_gguf_tokenizer
from .model import LoadedModel, QuantizedLinear, WeightSource

ARCHITECTURES = ("llama", "qwen2")

# GGUF tensor name -> ferrumc name; `{i}` stands for the layer index.
GGUF_NAMES: dict[str, str] = {
    "token_embd.weight": "embed.weight",
    "output_norm.weight": "norm.weight",
    "output.weight": "lm_head.weight",
    "blk.{i}.attn_norm.weight": "layers.{i}.attn_norm.weight",
    "blk.{i}.attn_q.weight": "layers.{i}.attn.q.weight",
    "blk.{i}.attn_k.weight": "layers.{i}.attn.k.weight",
    "blk.{i}.attn_v.weight": "layers.{i}.attn.v.weight",
    "blk.{i}.attn_q.bias": "layers.{i}.attn.q.bias",
    "blk.{i}.attn_k.bias": "layers.{i}.attn.k.bias",
    "blk.{i}.attn_v.bias": "layers.{i}.attn.v.bias",
    "blk.{i}.attn_output.weight": "layers.{i}.attn.o.weight",
    "blk.{i}.ffn_norm.weight": "layers.{i}.mlp_norm.weight",
    "blk.{i}.ffn_gate.weight": "layers.{i}.mlp.gate.weight",
    "blk.{i}.ffn_up.weight": "layers.{i}.mlp.up.weight",
    "blk.{i}.ffn_down.weight": "layers.{i}.mlp.down.weight",
}
# Tensors llama.cpp writes that ferrumc folds into the config instead (llama3 rope factors).
FOLDED = ("rope_freqs.weight",)

_LAYER = re.compile(r"^blk\.(\d+)\.(.+)$")


def ferrumc_name(gguf_name: str) -> str | None:
    """The ferrumc name of a GGUF tensor, or None when the table has no entry for it."""
    if m := _LAYER.match(gguf_name):
        target = GGUF_NAMES.get(f"blk.{{i}}.{m[2]}")
        return target.format(i=m[1]) if target else None
    return GGUF_NAMES.get(gguf_name)


def unpermute_rotary(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's q/k row permutation (interleaved rotary pairs -> HF's rotate-half halves).

    llama.cpp stores row (h, j, s) of a head's rows [D/2, 2] where HF has row (h, s, j) of [2, D/2].
    """
    head_dim = w.shape[0] // n_heads
    # w: [H, D/2, 2, ...] -> [H, 2, D/2, ...]
    return w.reshape(n_heads, head_dim // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def permute_rotary(w: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's converter permutation (HF layout -> GGUF layout); the inverse of `unpermute_rotary`."""
    head_dim = w.shape[0] // n_heads
    return w.reshape(n_heads, 2, head_dim // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _rope_scaling(f: GGUFFile, arch: str, theta: float, rotary_dim: int) -> RopeScaling | None:
    key = f"{arch}.rope.scaling"
    if "rope_freqs.weight" in f:
        return _llama3_from_factors(f, theta, rotary_dim)
    kind = f.get_str(f"{key}.type", "none")
    if kind == "none":
        return None
    if kind == "linear":
        return RopeScaling("linear", factor=f.get_float(f"{key}.factor"))
    if kind == "yarn":
        beta_fast, beta_slow = f.get(f"{key}.yarn_beta_fast"), f.get(f"{key}.yarn_beta_slow")
        return RopeScaling(
            "yarn",
            factor=f.get_float(f"{key}.factor"),
            original_max_position_embeddings=f.get_int(f"{key}.original_context_length"),
            beta_fast=None if beta_fast is None else float(beta_fast),  # type: ignore[arg-type]
            beta_slow=None if beta_slow is None else float(beta_slow),  # type: ignore[arg-type]
        )
    raise UnsupportedModel(f"{f.path}: {key}.type is {kind!r}; supported: none, linear, yarn")


def _llama3_from_factors(f: GGUFFile, theta: float, rotary_dim: int) -> RopeScaling:
    """Recover Llama 3's rope scaling from the per-frequency divisors llama.cpp stores instead."""
    stored = f.loader("rope_freqs.weight")()
    # Every published Llama 3.x uses these; only the factor varies (8 for 3.1, 32 for 3.2).
    scaling = RopeScaling(
        "llama3",
        factor=float(stored.max()),
        low_freq_factor=1.0,
        high_freq_factor=4.0,
        original_max_position_embeddings=8192,
    )
    base, _ = inv_freq(theta, rotary_dim, None)
    scaled, _ = inv_freq(theta, rotary_dim, scaling)
    if stored.shape != base.shape or not np.allclose(base / scaled, stored, rtol=1e-4):
        raise UnsupportedModel(
            f"{f.path}: rope_freqs.weight does not match Llama 3 rope scaling "
            "(factor, low 1, high 4, original 8192); other rope factor tables are not supported"
        )
    return scaling


def gguf_config(f: GGUFFile) -> DecoderConfig:
    """The DecoderConfig described by a GGUF's `{arch}.*` metadata and its tensor list."""
    arch = f.get_str("general.architecture")
    if arch not in ARCHITECTURES:
        raise UnsupportedModel(
            f"{f.path}: GGUF architecture {arch!r} is not supported; supported: {', '.join(ARCHITECTURES)}"
        )
    hidden, heads = f.get_int(f"{arch}.embedding_length"), f.get_int(f"{arch}.attention.head_count")
    head_dim = f.get_int(f"{arch}.attention.key_length", hidden // heads)
    rotary_dim = f.get_int(f"{arch}.rope.dimension_count", head_dim)
    theta = f.get_float(f"{arch}.rope.freq_base", 10000.0)
    tokens = len(f.string_array("tokenizer.ggml.tokens"))
    vocab = tokens or f.header("token_embd.weight").shape[0]
    return DecoderConfig(
        model_type=arch,
        vocab_size=vocab,
        hidden_size=hidden,
        num_layers=f.get_int(f"{arch}.block_count"),
        num_heads=heads,
        num_kv_heads=f.get_int(f"{arch}.attention.head_count_kv", heads),
        head_dim=head_dim,
        intermediate_size=f.get_int(f"{arch}.feed_forward_length"),
        rms_norm_eps=f.get_float(f"{arch}.attention.layer_norm_rms_epsilon"),
        rope_theta=theta,
        rope_scaling=_rope_scaling(f, arch, theta, rotary_dim),
        partial_rotary_factor=rotary_dim / head_dim,
        max_position_embeddings=f.get_int(f"{arch}.context_length"),
        tie_word_embeddings="output.weight" not in f,
        attention_bias="blk.0.attn_q.bias" in f,
        weight_dtype=DType.f32,
    )


def expected_shape(name: str, c: DecoderConfig) -> tuple[int, ...]:
    """The shape ferrumc's graph expects for a dense-model weight (see config.py's name list)."""
    leaf = name.split(".", 2)[-1] if name.startswith("layers.") else name
    q, kv = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
    shapes = {
        "embed.weight": (c.vocab_size, c.hidden_size),
        "lm_head.weight": (c.vocab_size, c.hidden_size),
        "norm.weight": (c.hidden_size,),
        "attn_norm.weight": (c.hidden_size,),
        "mlp_norm.weight": (c.hidden_size,),
        "attn.q.weight": (q, c.hidden_size),
        "attn.k.weight": (kv, c.hidden_size),
        "attn.v.weight": (kv, c.hidden_size),
        "attn.q.bias": (q,),
        "attn.k.bias": (kv,),
        "attn.v.bias": (kv,),
        "attn.o.weight": (c.hidden_size, q),
        "mlp.gate.weight": (c.intermediate_size, c.hidden_size),
        "mlp.up.weight": (c.intermediate_size, c.hidden_size),
        "mlp.down.weight": (c.hidden_size, c.intermediate_size),
    }
    return shapes[leaf]


def required_names(c: DecoderConfig) -> list[str]:
    """Every ferrumc weight name a dense llama/qwen2 graph reads."""
    per_layer = ["attn_norm", "attn.q", "attn.k", "attn.v", "attn.o", "mlp_norm"]
    per_layer += ["mlp.gate", "mlp.up", "mlp.down"]
    names = ["embed.weight", "norm.weight"] + ([] if c.tie_word_embeddings else ["lm_head.weight"])
    for i in range(c.num_layers):
        names += [f"layers.{i}.{leaf}.weight" for leaf in per_layer]
        if c.attention_bias:
            names += [f"layers.{i}.attn.{p}.bias" for p in "qkv"]
    return names


def _rotary_heads(name: str, c: DecoderConfig) -> int | None:
    """Heads to un-permute by, for llama q/k tensors; None for every other tensor."""
    if c.model_type != "llama":
        return None
    if ".attn.q." in name:
        return c.num_heads
    if ".attn.k." in name:
        return c.num_kv_heads
    return None


def _loader(f: GGUFFile, gguf_name: str, heads: int | None) -> Callable[[], np.ndarray]:
    read = f.loader(gguf_name)
    if heads is None:
        return read
    return lambda: unpermute_rotary(read(), heads)


# Linear weights (their leaf names) that a Q4_0 / Q4_1 tensor feeds as int4 with keep_int4.
INT4_LINEARS = (
    *(f"attn.{p}.weight" for p in "qkvo"),
    *(f"mlp.{p}.weight" for p in ("gate", "up", "down")),
    "lm_head.weight",
)
# ... and the token embedding: the lookup gathers int4 rows (int4_embedding) and a tied head reads
# the same blocks (int4_linear), so no float table is stored.
INT4_TABLES = (*INT4_LINEARS, "embed.weight")


def _int4_weights(
    f: GGUFFile, gguf_name: str, linear: str, shape: tuple[int, ...], heads: int | None
) -> tuple[QuantizedLinear, dict[str, TensorType], dict[str, Callable[[], np.ndarray]]]:
    """One Q4_0 / Q4_1 linear as int4 weights `<linear>.qweight`, `.scales` (and `.zeros`)."""
    data, qtype = f.raw(gguf_name)
    n, k = shape
    quant = QuantizedLinear(
        Int4Format(GROUP, qtype == Q.Q4_0), DType.f16, None, f"GGUF {qtype.name}"
    )
    decoders = {"qweight": q4_qweight, "scales": q4_scales, "zeros": q4_zeros}
    if qtype == Q.Q4_0:
        del decoders["zeros"]
    groups = (n, k // GROUP)
    shapes = {"qweight": (n, k), "scales": groups, "zeros": groups}
    dtypes = {"qweight": DType.u4, "scales": DType.f16, "zeros": DType.f32}
    types = {f"{linear}.{p}": TensorType(dtypes[p], shapes[p]) for p in decoders}

    def loader(decode: Callable[..., np.ndarray]) -> Callable[[], np.ndarray]:
        def load() -> np.ndarray:
            array = decode(data, qtype, n, k)
            return array if heads is None else unpermute_rotary(array, heads)  # rows only

        return load

    loaders = {f"{linear}.{p}": loader(decode) for p, decode in decoders.items()}
    return quant, types, loaders


def gguf_weights(
    f: GGUFFile, config: DecoderConfig, keep_int4: bool = False
) -> tuple[WeightSource, dict[str, QuantizedLinear]]:
    """Every GGUF tensor under its ferrumc name, shape-checked; fails on any tensor it cannot place.

    With `keep_int4`, Q4_0 / Q4_1 linear weights and token embedding stay int4 (returned as the
    quantized linears, the embedding as "embed"); otherwise, as every other type, they are
    dequantized to f32 when loaded.
    """
    types: dict[str, TensorType] = {}
    loaders: dict[str, Callable[[], np.ndarray]] = {}
    storage: dict[str, str] = {}
    quantized: dict[str, QuantizedLinear] = {}
    unused: list[str] = []
    for t in f.tensors():
        if t.name in FOLDED:
            unused.append(t.name)
            continue
        name = ferrumc_name(t.name)
        if name is None or (
            name.startswith("layers.") and int(name.split(".")[1]) >= config.num_layers
        ):
            raise UnsupportedModel(
                f"{f.path}: GGUF tensor {t.name!r} has no ferrumc counterpart for a "
                f"{config.model_type} model; known names: {', '.join(GGUF_NAMES)}"
            )
        want = expected_shape(name, config)
        if t.shape != want:
            raise CheckpointError(
                f"{f.path}: tensor {t.name!r} (ferrumc {name}) has shape {list(t.shape)}, "
                f"the config implies {list(want)}"
            )
        heads = _rotary_heads(name, config)
        leaf = name.split(".", 2)[-1] if name.startswith("layers.") else name
        if keep_int4 and leaf in INT4_TABLES and Q[t.type_name] in INT4_TYPES:
            linear = name.removesuffix(".weight")
            quantized[linear], int4_types, int4_loaders = _int4_weights(
                f, t.name, linear, want, heads
            )
            types.update(int4_types)
            loaders.update(int4_loaders)
            storage.update(dict.fromkeys(int4_types, t.type_name))
            continue
        types[name] = TensorType(DType.f32, want)
        loaders[name] = _loader(f, t.name, heads)
        storage[name] = t.type_name
    missing = [
        n
        for n in required_names(config)
        if n not in types and n[: -len(".weight")] not in quantized
    ]
    if missing:
        raise CheckpointError(
            f"{f.path}: {len(missing)} weights the config needs are absent, e.g. {', '.join(missing[:3])}"
        )
    return WeightSource(types, loaders, unused=unused, storage=storage), quantized


def load_gguf(path: str | Path, keep_int4: bool = False) -> LoadedModel:
    """Open a GGUF file: config and tokenizer now, weights read (and dequantized) only when loaded.

    `keep_int4`: Q4_0 / Q4_1 linear weights and token embedding stay int4 (group 32) instead of
    being dequantized.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such GGUF file")
    f = GGUFFile(path)
    config = gguf_config(f)
    weights, quantized = gguf_weights(f, config, keep_int4)
    tokenizer = load_gguf_tokenizer(f)
    return LoadedModel(
        source=path,
        format="gguf",
        config=config,
        weights=weights,
        tokenizer=tokenizer,
        quantized=quantized,
    )
