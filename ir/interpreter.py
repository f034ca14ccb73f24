"""The numpy interpreter: the reference numerics of every op, and a runner that evaluates graphs.

Floats are computed in f32 and rounded to the value's dtype after each op (f16 by numpy, bf16 by
ml_dtypes), so an f16/bf16 graph behaves like a low-precision run. Where Hugging Face rounds
inside an op (RMSNorm before the weight multiply, rotary's cos/sin and products) the kernel
rounds at the same points, so results match transformers bit for bit where torch's f32 maths
does. u4 values travel packed (ir/int4.py) except through layout ops, which see them unpacked.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping

import numpy as np

from ..errors import CheckpointError, RequestError
from . import ops
from .graph import Graph, Value
from .int4 import pack_int4, unpack_int4
from .int4_quantize import rtn_quantize
from .rope import inv_freq
from .types import FLOAT_DTYPES, Dim, DType, KVCacheType, TensorType, Type, storage_shape

F32 = np.float32
_FLOAT_STORAGE = {d.numpy for d in FLOAT_DTYPES}


def _f32(x: np.ndarray) -> np.ndarray:
    return np.asarray(x).astype(F32, copy=False)


def _rounded(x: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Round f32 values to `dtype` and back, for ops that round inside (as torch does)."""
    return x.astype(dtype).astype(F32)


def _softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)


def _silu(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):  # exp(-x) overflows to inf for very negative x: silu -> -0
        return x / (F32(1) + np.exp(-x))


# --- linear algebra -----------------------------------------------------------------------------


def embedding(op: ops.Embedding, table: np.ndarray, ids: np.ndarray) -> np.ndarray:
    bad = (ids < 0) | (ids >= table.shape[0])
    if bad.any():
        raise RequestError(f"token id {ids[bad][0]} outside the vocabulary 0..{table.shape[0] - 1}")
    return table[ids]


def linear(op: ops.Linear, x: np.ndarray, w: np.ndarray, bias: np.ndarray | None = None):
    y = _f32(x) @ _f32(w).T
    if bias is not None:
        y += _f32(bias)
    return y.astype(x.dtype)


def dequantize_int4(
    q: np.ndarray, scales: np.ndarray, zeros: np.ndarray | None, group_size: int
) -> np.ndarray:
    """w[n, k] = scales[n, k // g] * (q[n, k] - zero) in f32, zero = zeros[n, k // g] or 8."""
    qv = _f32(unpack_int4(q))
    n, k = qv.shape
    zero = _f32(zeros)[..., None] if zeros is not None else F32(8)
    w = (qv.reshape(n, k // group_size, group_size) - zero) * _f32(scales)[..., None]
    return w.reshape(n, k)


def int4_linear(op: ops.Int4Linear, x: np.ndarray, q: np.ndarray, scales: np.ndarray, *rest):
    extra = list(rest)
    zeros = extra.pop(0) if op.has_zeros else None
    perm = extra.pop(0) if op.has_perm else None
    bias = extra.pop(0) if op.has_bias else None
    if perm is not None:
        x = np.take(x, perm, axis=-1)  # act-order: column k of q multiplies x[..., perm[k]]
    # The dequantized weight stays f32: the op's numerics are those of the unquantized matmul.
    w = dequantize_int4(q, scales, zeros, op.group_size)
    y = linear(ops.Linear(has_bias=op.has_bias), x, w, bias)
    if op.swiglu:  # exactly the split, silu and mul it replaces
        half = y.shape[-1] // 2
        gate, up = split(ops.Split(axis=-1, sizes=(half, half)), y)
        y = mul(ops.Mul(), silu(ops.SiLU(), gate), up)
    return y


def int4_embedding(op: ops.Int4Embedding, q: np.ndarray, scales: np.ndarray, *rest):
    zeros, ids = (rest[0], rest[1]) if op.has_zeros else (None, rest[0])
    embedding(ops.Embedding(), q, ids)  # the same id check as a float table's
    flat = ids.reshape(-1)  # only the gathered rows are unpacked and dequantized
    rows = dequantize_int4(
        q[flat], scales[flat], None if zeros is None else zeros[flat], op.group_size
    )
    return rows.reshape(*ids.shape, rows.shape[-1]).astype(op.dtype.numpy)


def quantize_int4(op: ops.QuantizeInt4, w: np.ndarray) -> tuple[np.ndarray, ...]:
    q, scales, zeros = rtn_quantize(w, op.group_size, op.symmetric, op.dtype.numpy)
    return (pack_int4(q), scales) if op.symmetric else (pack_int4(q), scales, zeros)


# --- normalization and position --------------------------------------------------------------------


def rms_norm(op: ops.RMSNorm | ops.AddRMSNorm, x: np.ndarray, w: np.ndarray) -> np.ndarray:
    xf = _f32(x)
    variance = np.mean(xf * xf, axis=-1, keepdims=True)
    normed = xf * (F32(1) / np.sqrt(variance + F32(op.eps)))
    # HF: `weight * hidden.to(input_dtype)`: round the normalized value before the multiply.
    return (_f32(w) * _rounded(normed, x.dtype)).astype(x.dtype)


def add_rms_norm(op: ops.AddRMSNorm, x: np.ndarray, residual: np.ndarray, w: np.ndarray):
    s = (_f32(x) + _f32(residual)).astype(x.dtype)
    return rms_norm(op, s, w), s


def rotary(op: ops.Rotary, x: np.ndarray, positions: np.ndarray) -> np.ndarray:
    d, half = op.rotary_dim, op.rotary_dim // 2
    freqs, factor = inv_freq(op.theta, d, op.scaling)
    angles = positions.astype(F32)[:, None] * freqs[None, :]  # [T, d/2]
    emb = np.concatenate([angles, angles], axis=-1)[:, None, :]  # [T, 1, d]
    # HF rounds cos/sin to x's dtype and each product before the sum.
    cos = _rounded(np.cos(emb) * F32(factor), x.dtype)
    sin = _rounded(np.sin(emb) * F32(factor), x.dtype)
    xr = _f32(x[..., :d])
    rotated = np.concatenate([-xr[..., half:], xr[..., :half]], axis=-1)
    out = _rounded(xr * cos, x.dtype) + _rounded(rotated * sin, x.dtype)
    return np.concatenate([out.astype(x.dtype), x[..., d:]], axis=-1)


# --- attention -----------------------------------------------------------------------------------


def causal_attention(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    scale: float,
    sliding_window: int | None,
    past: int = 0,
) -> np.ndarray:
    """Queries q[Tq, Hq, D] at positions past.. attend to k, v [Tk, Hkv, D] at positions 0.. (f32).

    Query i sees key j when j <= i and i - j < sliding_window; q head h reads kv head h // (Hq/Hkv).
    """
    tq, hq, d = q.shape
    tk, hkv, _ = k.shape
    assert tk >= past + tq, f"{tk} keys cannot serve queries at {past}..{past + tq - 1}"
    group = hq // hkv
    qf = _f32(q).reshape(tq, hkv, group, d).transpose(1, 2, 0, 3)  # [Hkv, G, Tq, D]
    kf = _f32(k).transpose(1, 2, 0)[:, None]  # [Hkv, 1, D, Tk]
    vf = _f32(v).transpose(1, 0, 2)[:, None]  # [Hkv, 1, Tk, D]
    scores = (qf @ kf) * F32(scale)  # [Hkv, G, Tq, Tk]
    i = past + np.arange(tq)[:, None]
    j = np.arange(tk)[None, :]
    visible = j <= i
    if sliding_window is not None:
        visible &= i - j < sliding_window
    probs = _softmax(np.where(visible, scores, -np.inf))
    out = (probs @ vf).transpose(2, 0, 1, 3)  # [Tq, Hkv, G, D]
    return out.reshape(tq, hq, d).astype(q.dtype)


def attention(op: ops.Attention, q: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
    return causal_attention(q, k, v, op.scale, op.sliding_window)


def paged_attention(op: ops.PagedAttention, q, k, v, cache) -> np.ndarray:
    """The cache (ir/kvcache_ref.PagedKVCache or alike) stores k, v and runs the attention."""
    return cache.attend(op.layer, q, k, v, op.scale, op.sliding_window)


# --- elementwise ----------------------------------------------------------------------------------


def add(op: ops.Add, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (_f32(a) + _f32(b)).astype(a.dtype)


def mul(op: ops.Mul, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (_f32(a) * _f32(b)).astype(a.dtype)


def silu(op: ops.SiLU, x: np.ndarray) -> np.ndarray:
    return _silu(_f32(x)).astype(x.dtype)


_erf = np.frompyfunc(math.erf, 1, 1)


def gelu(op: ops.GELU, x: np.ndarray) -> np.ndarray:
    xf = _f32(x)
    if op.approximate == "tanh":
        inner = F32(math.sqrt(2 / math.pi)) * (xf + F32(0.044715) * xf**3)
        return (F32(0.5) * xf * (F32(1) + np.tanh(inner))).astype(x.dtype)
    erf = _erf(xf.astype(np.float64) / math.sqrt(2)).astype(np.float64)
    return (xf * (0.5 * (1.0 + erf)).astype(F32)).astype(x.dtype)


def softmax(op: ops.Softmax, x: np.ndarray) -> np.ndarray:
    return _softmax(_f32(x), op.axis).astype(x.dtype)


def cast(op: ops.Cast, x: np.ndarray) -> np.ndarray:
    if op.dtype.is_float and x.dtype in _FLOAT_STORAGE:
        return _f32(x).astype(op.dtype.numpy)  # f16 -> bf16 goes through f32 exactly, rounds once
    return x.astype(op.dtype.numpy)


# --- layout (u4 values arrive unpacked: see run_graph) ---------------------------------------------


def reshape(op: ops.Reshape, x: np.ndarray) -> np.ndarray:
    return x.reshape(op.shape)  # symbolic dims were bound by the runner


def transpose(op: ops.Transpose, x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.transpose(x, op.perm))


def concat(op: ops.Concat, *xs: np.ndarray) -> np.ndarray:
    return np.concatenate(xs, axis=op.axis)


def split(op: ops.Split, x: np.ndarray) -> tuple[np.ndarray, ...]:
    cuts = np.cumsum(op.sizes)[:-1]
    return tuple(np.ascontiguousarray(p) for p in np.split(x, cuts, axis=op.axis))


# --- mixture of experts -----------------------------------------------------------------------------


def moe_route(op: ops.MoERoute, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    probs = _softmax(_f32(logits))
    ids = np.argsort(-probs, axis=-1, kind="stable")[:, : op.top_k]  # ties: lower id first
    weights = np.take_along_axis(probs, ids, axis=-1)
    if op.normalize:
        weights = weights / weights.sum(axis=-1, keepdims=True)
    return weights.astype(logits.dtype), ids.astype(np.int32)


def moe_experts(op: ops.MoEExperts, x, weights, ids, *mats) -> np.ndarray:
    down = mats[-1]
    inter = down.shape[2]
    xf, wf = _f32(x), _f32(weights)

    def r(a: np.ndarray) -> np.ndarray:  # HF rounds every step to x's dtype
        return _rounded(a, x.dtype)

    out = np.zeros(xf.shape, F32)
    for e in np.unique(ids):  # HF's order: experts ascending, each token at most once per expert
        tokens, slots = np.nonzero(ids == e)
        if op.fused_gate_up:
            gate, up = _f32(mats[0][e, :inter]), _f32(mats[0][e, inter:])
        else:
            gate, up = _f32(mats[0][e]), _f32(mats[1][e])
        xe = xf[tokens]  # [n, C]
        h = r(r(_silu(r(xe @ gate.T))) * r(xe @ up.T))  # [n, I]
        y = r(r(h @ _f32(down[e]).T) * wf[tokens, slots][:, None])  # [n, C]
        out[tokens] = r(out[tokens] + y)
    return out.astype(x.dtype)


Kernel = Callable[..., "np.ndarray | tuple[np.ndarray, ...]"]

KERNELS: dict[type[ops.Op], Kernel] = {
    ops.Embedding: embedding,
    ops.Linear: linear,
    ops.Int4Linear: int4_linear,
    ops.Int4Embedding: int4_embedding,
    ops.QuantizeInt4: quantize_int4,
    ops.RMSNorm: rms_norm,
    ops.AddRMSNorm: add_rms_norm,
    ops.Rotary: rotary,
    ops.Attention: attention,
    ops.PagedAttention: paged_attention,
    ops.Add: add,
    ops.Mul: mul,
    ops.SiLU: silu,
    ops.GELU: gelu,
    ops.Softmax: softmax,
    ops.Cast: cast,
    ops.Reshape: reshape,
    ops.Transpose: transpose,
    ops.Concat: concat,
    ops.Split: split,
    ops.MoERoute: moe_route,
    ops.MoEExperts: moe_experts,
}


# --- the runner -------------------------------------------------------------------------------------

Weights = Mapping[str, np.ndarray] | Callable[[str], np.ndarray]


def run_graph(graph: Graph, inputs: dict[str, object], weights: Weights) -> dict[str, np.ndarray]:
    """Evaluate `graph` node by node; weights are fetched by name at first use, once each.

    Inputs are checked against the graph's input types, binding symbolic dims consistently
    (every "seq" the same size). Each value is freed once its last reader has run, so the
    peak memory is the live set, not the whole graph.
    """
    expected = {n.op.name for n in graph.inputs}  # type: ignore[attr-defined]
    missing, unexpected = expected - inputs.keys(), inputs.keys() - expected
    if missing or unexpected:
        raise RequestError(
            f"graph {graph.name} takes inputs {sorted(expected)}; "
            f"missing {sorted(missing)}, unexpected {sorted(unexpected)}"
        )
    dims: dict[str, int] = {}
    env: dict[Value, object] = {}
    for node in graph.inputs:
        env[node.out] = _input_value(node.op, inputs[node.op.name], dims)  # type: ignore[arg-type]
    last_use = {v: i for i, node in enumerate(graph.nodes) for v in node.inputs}
    keep = set(graph.outputs.values())

    def get(v: Value) -> object:
        if v not in env:  # a weight, fetched at its first use
            env[v] = _weight_value(v.node.op, weights, dims)  # type: ignore[arg-type]
        return env[v]

    for i, node in enumerate(graph.nodes):
        if isinstance(node.op, ops.SOURCES):
            continue
        outs = _run_node(
            node.op, [v.type for v in node.inputs], [get(v) for v in node.inputs], dims
        )
        for v, out in zip(node.outputs, outs, strict=True):
            problem = _mismatch(v.type, out, dims) if isinstance(v.type, TensorType) else None
            assert problem is None, f"{node.op.opname} kernel returned {problem}"
            if v in last_use or v in keep:
                env[v] = out
        for v in set(node.inputs):
            if last_use[v] == i and v not in keep:
                del env[v]
    return {name: get(v) for name, v in graph.outputs.items()}  # type: ignore[misc]


def _run_node(op: ops.Op, types: list[Type], args: list, dims: dict[str, int]) -> tuple:
    if isinstance(op, ops.Reshape):  # bind the symbolic dims the target names
        op = dataclasses.replace(op, shape=tuple(dims.get(d, d) for d in op.shape))  # type: ignore[arg-type]
    # Layout ops move logical elements, so packed u4 values pass through them unpacked.
    unpacked = isinstance(op, ops.LAYOUT) and any(
        isinstance(t, TensorType) and t.dtype is DType.u4 for t in types
    )
    if unpacked:
        args = [unpack_int4(a) for a in args]
    out = KERNELS[type(op)](op, *args)
    outs = out if isinstance(out, tuple) else (out,)
    return tuple(pack_int4(o) for o in outs) if unpacked else outs


def _mismatch(t: TensorType, array: np.ndarray, dims: dict[str, int]) -> str | None:
    """Why `array` cannot hold a value of type `t` (binding symbolic dims into `dims`), or None."""
    if not isinstance(array, np.ndarray) or array.dtype != t.dtype.numpy:
        got = array.dtype if isinstance(array, np.ndarray) else type(array).__name__
        return f"got {got}, expected {t.dtype.numpy} (type {t})"
    shape: tuple[Dim, ...] = storage_shape(t.dtype, t.shape)
    if array.ndim != len(shape):
        return f"got shape {list(array.shape)}, expected rank {len(shape)} (type {t})"
    for want, got in zip(shape, array.shape, strict=True):
        if isinstance(want, str):
            bound = dims.setdefault(want, got)
            if bound != got:
                return f"got shape {list(array.shape)}: dim {want!r} is {got} here but {bound} elsewhere"
        elif want != got:
            return f"got shape {list(array.shape)}, expected {list(shape)} (type {t})"
    return None


def _input_value(op: ops.Input, value: object, dims: dict[str, int]) -> object:
    t = op.type
    if isinstance(t, KVCacheType):
        if getattr(value, "type", None) != t:
            got = getattr(value, "type", type(value).__name__)
            raise RequestError(f"input {op.name!r} must be a KV cache {t}, got {got}")
        return value
    array = value if isinstance(value, np.ndarray) else np.asarray(value, dtype=t.dtype.numpy)
    problem = _mismatch(t, array, dims)
    if problem:
        raise RequestError(f"input {op.name!r}: {problem}")
    return array


def _weight_value(op: ops.Weight, weights: Weights, dims: dict[str, int]) -> np.ndarray:
    if isinstance(weights, Mapping):
        if op.name not in weights:
            raise CheckpointError(f"weight {op.name!r} ({op.type}) is missing from the weights")
        array = weights[op.name]
    else:
        array = weights(op.name)
    problem = _mismatch(op.type, np.asarray(array), dims)
    if problem:
        raise CheckpointError(f"weight {op.name!r}: {problem}")
    return np.asarray(array)
