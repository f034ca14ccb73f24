"""A tiny decoder built by hand in paged form: prefill and decode graphs sharing their weights.

It has the shape the passes produce (fused qkv with bias, fused gate/up, add_rms_norm, rotary,
paged_attention with a layer index), small enough to compile in seconds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ferrumc.ir import DType, GraphBuilder, KVCacheType, Module, TensorType, ops
from ferrumc.ir.graph import Graph, Value

F32 = DType.f32


@dataclass(frozen=True)
class TinyConfig:
    vocab: int = 64
    hidden: int = 32
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    head_dim: int = 8
    inter: int = 48
    theta: float = 10000.0
    eps: float = 1e-5


def _graph(c: TinyConfig, form: str) -> Graph:
    t = "seq" if form == "prefill" else "batch"
    b = GraphBuilder(form)
    tokens = b.input("tokens", TensorType(DType.i32, (t,)))
    positions = b.input("positions", TensorType(DType.i32, (t,)))
    cache = b.input("kv_cache", KVCacheType(c.layers, c.kv_heads, c.head_dim, F32))
    qkv_out = (c.heads + 2 * c.kv_heads) * c.head_dim

    def w(name: str, *shape: int) -> Value:
        return b.weight(name, F32, shape)

    x = b.emit(ops.Embedding(), w("embed.weight", c.vocab, c.hidden), tokens)  # [T, C]
    h = b.emit(ops.RMSNorm(eps=c.eps), x, w("layers.0.attn_norm.weight", c.hidden))
    for i in range(c.layers):
        p = f"layers.{i}"
        qkv = b.emit(
            ops.Linear(has_bias=True),
            h,
            w(f"{p}.attn.qkv.weight", qkv_out, c.hidden),
            w(f"{p}.attn.qkv.bias", qkv_out),
        )  # [T, (Hq + 2 Hkv) D]
        sizes = (c.heads * c.head_dim, c.kv_heads * c.head_dim, c.kv_heads * c.head_dim)
        q, k, v = b.emit(ops.Split(axis=-1, sizes=sizes), qkv)
        q = b.emit(ops.Reshape((-1, c.heads, c.head_dim)), q)  # [T, Hq, D]
        k = b.emit(ops.Reshape((-1, c.kv_heads, c.head_dim)), k)  # [T, Hkv, D]
        v = b.emit(ops.Reshape((-1, c.kv_heads, c.head_dim)), v)
        rope = ops.Rotary(theta=c.theta, rotary_dim=c.head_dim)
        q, k = b.emit(rope, q, positions), b.emit(rope, k, positions)
        attend = ops.PagedAttention(
            layer=i,
            num_heads=c.heads,
            num_kv_heads=c.kv_heads,
            scale=c.head_dim**-0.5,
            form=form,
        )
        o = b.emit(attend, q, k, v, cache)
        o = b.emit(ops.Reshape((-1, c.heads * c.head_dim)), o)
        o = b.emit(ops.Linear(), o, w(f"{p}.attn.o.weight", c.hidden, c.heads * c.head_dim))
        h, x = b.emit(ops.AddRMSNorm(eps=c.eps), o, x, w(f"{p}.mlp_norm.weight", c.hidden))
        gate_up = b.emit(ops.Linear(), h, w(f"{p}.mlp.gate_up.weight", 2 * c.inter, c.hidden))
        gate, up = b.emit(ops.Split(axis=-1, sizes=(c.inter, c.inter)), gate_up)
        act = b.emit(ops.Mul(), b.emit(ops.SiLU(), gate), up)
        down = b.emit(ops.Linear(), act, w(f"{p}.mlp.down.weight", c.hidden, c.inter))
        norm = f"layers.{i + 1}.attn_norm.weight" if i + 1 < c.layers else "norm.weight"
        h, x = b.emit(ops.AddRMSNorm(eps=c.eps), down, x, w(norm, c.hidden))
    logits = b.emit(ops.Linear(), h, w("lm_head.weight", c.vocab, c.hidden))  # [T, V]
    return b.build({"logits": logits})


def tiny_paged_module(config: TinyConfig | None = None) -> Module:
    c = config or TinyConfig()
    return Module({form: _graph(c, form) for form in ops.ATTENTION_FORMS})


def random_weights(module: Module, seed: int = 0) -> dict[str, np.ndarray]:
    """Weights with clear greedy winners: norms near 1, projections ~N(0, 0.3^2), embeddings N(0, 1)."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, t in sorted(module.weight_types().items()):
        if "norm" in name:
            values = 1.0 + 0.1 * rng.standard_normal(t.shape)
        elif name.startswith(("embed", "lm_head")):
            values = rng.standard_normal(t.shape)
        else:
            values = 0.3 * rng.standard_normal(t.shape)
        out[name] = values.astype(t.dtype.numpy)
    return out


def vm_greedy_batch(
    executor, seq_ids: list[int], prompts: list[list[int]], steps: int
) -> np.ndarray:
    """Prefill `prompts` together on a VMExecutor, then decode greedily together; the sequences are
    removed afterwards. Returns the logits [B, steps, vocab] each token was chosen from."""
    for s in seq_ids:
        executor.add_sequence(s)
    logits = [executor.prefill(seq_ids, prompts)]
    for _ in range(steps - 1):
        logits.append(executor.decode(seq_ids, [int(t) for t in np.argmax(logits[-1], axis=-1)]))
    for s in seq_ids:
        executor.remove_sequence(s)
    return np.stack(logits, axis=1)
