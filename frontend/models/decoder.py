"""The shared decoder graph, token ids to logits, as one page of maths driven by DecoderConfig.

T is the number of tokens (`seq`), C hidden, Hq / Hkv query / key-value heads, D head dim,
I the MLP width, V the vocabulary. Everything is computed in f32; weights are declared in the
checkpoint's dtype and cast once where they enter.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from ...errors import UnsupportedModel
from ...ir.graph import Graph, GraphBuilder, Value
from ...ir.ops import (
    Add,
    Attention,
    Cast,
    Embedding,
    Int4Embedding,
    Int4Linear,
    Linear,
    Mul,
    Op,
    Reshape,
    RMSNorm,
    Rotary,
    SiLU,
)
from ...ir.types import DType, TensorType
from ...ir.verify import verify
from ..config import DecoderConfig
from ..model import QuantizedLinear
from .spec import SparseMLP

# The token embedding's name in `quantized` when its table is stored in int4 (GGUF Q4_0 / Q4_1):
# its weights are embed.qweight, embed.scales (and embed.zeros).
EMBED = "embed"


class Layers:
    """A GraphBuilder with the decoder's building blocks; weights are f32 values once declared."""

    def __init__(
        self, config: DecoderConfig, quantized: Mapping[str, QuantizedLinear] | None = None
    ) -> None:
        self.c = config
        self.quantized = dict(quantized or {})
        self.b = GraphBuilder("forward")
        self._weights: dict[str, Value] = {}

    def op(self, op: Op, *inputs: Value) -> Value:
        out = self.b.emit(op, *inputs)
        assert not isinstance(out, tuple), f"{op.opname} has several outputs"
        return out

    def weight(self, name: str, *shape: int) -> Value:
        """The checkpoint tensor `name` as f32 (a Cast follows weights stored narrower)."""
        if name not in self._weights:
            w = self.b.weight(name, self.c.weight_dtype, shape)
            if self.c.weight_dtype is not DType.f32:
                w = self.op(Cast(DType.f32), w)
            self._weights[name] = w
        return self._weights[name]

    def linear(self, x: Value, name: str, out: int, inp: int, bias: bool = False) -> Value:
        if name in self.quantized:
            return self.int4_linear(x, name, self.quantized[name], out, inp, bias)
        w = self.weight(f"{name}.weight", out, inp)
        if bias:
            return self.op(Linear(has_bias=True), x, w, self.weight(f"{name}.bias", out))
        return self.op(Linear(), x, w)

    def int4_linear(
        self, x: Value, name: str, quant: QuantizedLinear, out: int, inp: int, bias: bool
    ) -> Value:
        """The linear `name` on int4 weights as stored (scales and zeros are not cast: the op
        dequantizes in f32 whatever their dtype)."""
        g, symmetric = quant.format.group_size, quant.format.symmetric
        ins = [x, *self.int4_matrix(name, quant, out, inp)]
        if quant.perm is not None:
            ins.append(self.b.weight(quant.perm, DType.i32, (inp,)))
        if bias:
            ins.append(self.weight(f"{name}.bias", out))
        op = Int4Linear(
            group_size=g, has_zeros=not symmetric, has_perm=quant.perm is not None, has_bias=bias
        )
        return self.op(op, *ins)

    def int4_matrix(self, name: str, quant: QuantizedLinear, rows: int, cols: int) -> list[Value]:
        """The int4 weights of the matrix `name`: codes, scales and (asymmetric) zeros."""
        g = quant.format.group_size
        ins = [
            self.b.weight(f"{name}.qweight", DType.u4, (rows, cols)),
            self.b.weight(f"{name}.scales", quant.scale_dtype, (rows, cols // g)),
        ]
        if not quant.format.symmetric:
            ins.append(self.b.weight(f"{name}.zeros", DType.f32, (rows, cols // g)))
        return ins

    def embedding(self, tokens: Value) -> Value:
        """The token embedding lookup; an int4 table (`quantized["embed"]`) is gathered as stored."""
        v, c = self.c.vocab_size, self.c.hidden_size
        if EMBED in self.quantized:
            quant = self.quantized[EMBED]
            table = self.int4_matrix(EMBED, quant, v, c)
            fmt = quant.format
            op = Int4Embedding(group_size=fmt.group_size, has_zeros=not fmt.symmetric)
            return self.op(op, *table, tokens)
        return self.op(Embedding(), self.weight("embed.weight", v, c), tokens)

    def rms_norm(self, x: Value, name: str) -> Value:
        dim = x.tensor.shape[-1]
        assert isinstance(dim, int)
        return self.op(RMSNorm(eps=self.c.rms_norm_eps), x, self.weight(name, dim))

    def add(self, a: Value, b: Value) -> Value:
        return self.op(Add(), a, b)


def attention(L: Layers, i: int, x: Value, positions: Value) -> Value:
    """Self-attention of layer i on the normed x[T, C] -> [T, C]."""
    c, p = L.c, f"layers.{i}.attn"
    hq, hkv, d, h = c.num_heads, c.num_kv_heads, c.head_dim, c.hidden_size
    bias = c.attention_bias
    q = L.linear(x, f"{p}.q", hq * d, h, bias)  # q: [T, Hq*D]
    k = L.linear(x, f"{p}.k", hkv * d, h, bias)  # k: [T, Hkv*D]
    v = L.linear(x, f"{p}.v", hkv * d, h, bias)  # v: [T, Hkv*D]
    q = L.op(Reshape((-1, hq, d)), q)  # q: [T, Hq, D]
    k = L.op(Reshape((-1, hkv, d)), k)  # k, v: [T, Hkv, D]
    v = L.op(Reshape((-1, hkv, d)), v)
    if c.qk_norm:
        q = L.rms_norm(q, f"{p}.q_norm.weight")
        k = L.rms_norm(k, f"{p}.k_norm.weight")
    rope = Rotary(theta=c.rope_theta, rotary_dim=c.rotary_dim, scaling=c.rope_scaling)
    q, k = L.op(rope, q, positions), L.op(rope, k, positions)
    attend = Attention(
        num_heads=hq,
        num_kv_heads=hkv,
        scale=1.0 / math.sqrt(d),
        sliding_window=c.sliding_window,
    )
    o = L.op(attend, q, k, v)  # o: [T, Hq, D]
    o = L.op(Reshape((-1, hq * d)), o)  # o: [T, Hq*D]
    return L.linear(o, f"{p}.o", h, hq * d)


def mlp(L: Layers, i: int, x: Value) -> Value:
    """SwiGLU MLP of layer i on the normed x[T, C] -> [T, C]."""
    p, inter, h = f"layers.{i}.mlp", L.c.intermediate_size, L.c.hidden_size
    gate = L.linear(x, f"{p}.gate", inter, h)  # gate, up: [T, I]
    up = L.linear(x, f"{p}.up", inter, h)
    return L.linear(L.op(Mul(), L.op(SiLU(), gate), up), f"{p}.down", h, inter)


def build_decoder(
    config: DecoderConfig,
    sparse_mlp: SparseMLP | None = None,
    quantized: Mapping[str, QuantizedLinear] | None = None,
) -> Graph:
    """forward(tokens i32[seq], positions i32[seq]) -> logits f32[seq, V]; the linears named in
    `quantized` ("layers.0.attn.q", "lm_head", ...) are int4_linear on their stored int4 weights,
    and `quantized["embed"]` makes the lookup (and a tied head) read the table in int4."""
    if config.hidden_act not in ("silu", "swish"):
        raise UnsupportedModel(
            f"{config.model_type}: hidden_act {config.hidden_act!r} is not supported; valid: silu"
        )
    if config.moe_layers and sparse_mlp is None:
        raise UnsupportedModel(f"{config.model_type} has MoE layers but no sparse MLP")
    L = Layers(config, quantized)
    c = config
    tokens = L.b.input("tokens", TensorType(DType.i32, ("seq",)))
    positions = L.b.input("positions", TensorType(DType.i32, ("seq",)))
    x = L.embedding(tokens)  # [T, C]
    for i in range(c.num_layers):
        x = L.add(x, attention(L, i, L.rms_norm(x, f"layers.{i}.attn_norm.weight"), positions))
        h = L.rms_norm(x, f"layers.{i}.mlp_norm.weight")
        if i in c.moe_layers:
            assert sparse_mlp is not None
            x = L.add(x, sparse_mlp(L, i, h))
        else:
            x = L.add(x, mlp(L, i, h))
    x = L.rms_norm(x, "norm.weight")
    if c.tie_word_embeddings and EMBED in L.quantized:
        # The tied head reads the int4 table the lookup reads: one copy of it in the bundle.
        logits = L.int4_linear(x, EMBED, L.quantized[EMBED], c.vocab_size, c.hidden_size, False)
    elif c.tie_word_embeddings and "lm_head" not in L.quantized:
        logits = L.op(Linear(), x, L.weight("embed.weight", c.vocab_size, c.hidden_size))
    else:
        logits = L.linear(x, "lm_head", c.vocab_size, c.hidden_size)  # logits: [T, V]
    graph = verify(L.b.build({"logits": logits}))
    unplaced = [n for n in L.quantized if f"{n}.qweight" not in graph.weight_types()]
    if unplaced:
        raise UnsupportedModel(
            f"{c.model_type}: {unplaced[0]} is stored in int4 but is not a linear ferrumc can run "
            "in int4 (supported: attention and dense MLP projections, router, lm_head)"
        )
    return graph
