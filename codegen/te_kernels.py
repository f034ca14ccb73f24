"""Tensor-expression kernels for ops Relax has no exact high-level equivalent of (f32 numerics)."""

from __future__ import annotations

from tvm import te, tirx, topi

F32 = "float32"


def _f32(x: tirx.PrimExpr) -> tirx.PrimExpr:
    return x if x.dtype == F32 else x.astype(F32)


def _rounded(x: tirx.PrimExpr, dtype: str) -> tirx.PrimExpr:
    """An f32 value rounded to `dtype` and back, where Hugging Face rounds inside an op."""
    return x if dtype == F32 else x.astype(dtype).astype(F32)


def rms_norm(x: te.Tensor, w: te.Tensor, eps: float) -> te.Tensor:
    """x / sqrt(mean(x^2, -1) + eps) * w in f32. x: [..., C].

    As transformers (and ir/interpreter.py): the normalized value is rounded to x's dtype
    before the weight multiply.
    """
    c = x.shape[-1]
    k = te.reduce_axis((0, c), name="k")
    sumsq = te.compute(
        x.shape[:-1],
        lambda *i: te.sum(_f32(x[(*i, k)]) * _f32(x[(*i, k)]), axis=k),
        name="sumsq",
    )

    def norm(*i: tirx.Var) -> tirx.PrimExpr:
        inv = tirx.rsqrt(sumsq[i[:-1]] / tirx.Cast(F32, c) + tirx.const(eps, F32))
        return (_f32(w[i[-1]]) * _rounded(_f32(x[i]) * inv, x.dtype)).astype(x.dtype)

    return te.compute(x.shape, norm, name="rms_norm")


def silu(x: te.Tensor) -> te.Tensor:
    """x * sigmoid(x) in f32, with TVM's polynomial exp (fast_exp, ~1e-7 relative error): it
    vectorizes, where the exact exp is a libm call per element (SmolLM2's decode spent ~5 us
    a layer in them)."""
    xf = te.compute(x.shape, lambda *i: _f32(x[i]), name="silu_x")
    e = topi.fast_exp(te.compute(x.shape, lambda *i: -xf[i], name="silu_neg"))
    one = tirx.const(1.0, F32)
    return te.compute(x.shape, lambda *i: (xf[i] / (one + e[i])).astype(x.dtype), name="silu")


def rotary_table(positions: te.Tensor, inv_freq: te.Tensor, factor: float, dtype: str) -> te.Tensor:
    """cos and sin of each token's angles: [T, 2, rotary_dim / 2], computed in f32 and, as
    transformers does, rounded to the activations' `dtype` (held in f32). One table serves
    every layer's rotary: the angles depend on the positions only, and the sin and cos of
    each element (libm calls) cost more than the rotation itself."""
    (half,) = inv_freq.shape

    def entry(t: tirx.Var, which: tirx.Var, j: tirx.Var) -> tirx.PrimExpr:
        angle = positions[t].astype(F32) * inv_freq[j]
        scale = tirx.const(factor, F32)
        value = tirx.if_then_else(which == 0, tirx.cos(angle) * scale, tirx.sin(angle) * scale)
        return _rounded(value, dtype)

    return te.compute((positions.shape[0], 2, half), entry, name="rotary_table")


def rotary(x: te.Tensor, table: te.Tensor, rotary_dim: int) -> te.Tensor:
    """Rotate-half (NeoX) rotary embedding on the first `rotary_dim` of D. x: [T, H, D], table
    from rotary_table; as transformers does, each product is rounded to x's dtype before the
    sum."""
    half = rotary_dim // 2

    def rotate(t: tirx.Var, h: tirx.Var, d: tirx.Var) -> tirx.PrimExpr:
        # The partner lane stays inside [0, D) for every d, so no branch reads out of bounds.
        partner = tirx.if_then_else(d < half, d + half, d - half)
        sign = tirx.if_then_else(d < half, tirx.const(-1.0, F32), tirx.const(1.0, F32))
        j = tirx.floormod(d, half)
        own = _rounded(_f32(x[t, h, d]) * table[t, 0, j], x.dtype)
        rotated = own + _rounded(sign * _f32(x[t, h, partner]) * table[t, 1, j], x.dtype)
        return tirx.if_then_else(d < rotary_dim, rotated, _f32(x[t, h, d])).astype(x.dtype)

    return te.compute(x.shape, rotate, name="rotary")


def causal_mask(scores: te.Tensor, window: int | None) -> te.Tensor:
    """scores[H, Tq, Tk] with -inf where key j is after query i (or i - j >= window)."""

    def mask(h: tirx.Var, i: tirx.Var, j: tirx.Var) -> tirx.PrimExpr:
        allowed = j <= i
        if window is not None:
            allowed = tirx.all(allowed, i - j < window)
        return tirx.if_then_else(allowed, scores[h, i, j], tirx.min_value(scores.dtype))

    return te.compute(scores.shape, mask, name="causal_mask")


def int4_linear(
    x: te.Tensor,
    q: te.Tensor,
    scales: te.Tensor,
    zeros: te.Tensor | None,
    perm: te.Tensor | None,
    bias: te.Tensor | None,
    group_size: int,
) -> te.Tensor:
    """x[..., perm] @ dequant(q).T (+ bias), accumulated in f32; q: u8[N, K/2], low nibble first.

    dequant(q)[n, k] = scales[n, k // g] * (nibble(q, n, k) - zero), zero = zeros[n, k // g] or 8.
    The dequantize is its own stage, as dlight's GPU rules expect: they inline it into the
    matmul's loads (GEMV for one row, Matmul's tiles otherwise).
    """
    n_out = q.shape[0]
    k_in = x.shape[-1]

    def dequant(n: tirx.Var, kk: tirx.Var) -> tirx.PrimExpr:
        byte = q[n, kk // 2]
        nibble = (byte >> ((kk % 2) * 4).astype(byte.dtype)) & tirx.const(0xF, byte.dtype)
        g = kk // group_size
        zero = _f32(zeros[n, g]) if zeros is not None else tirx.const(8.0, F32)
        return (nibble.astype(F32) - zero) * _f32(scales[n, g])

    w = te.compute((n_out, k_in), dequant, name="int4_dequantize")
    if perm is not None:
        x = te.compute(x.shape, lambda *i: x[(*i[:-1], perm[i[-1]])], name="int4_gather_x")
    k = te.reduce_axis((0, k_in), name="k")
    acc = te.compute(
        (*x.shape[:-1], n_out),
        lambda *i: te.sum(_f32(x[(*i[:-1], k)]) * w[i[-1], k], axis=k),
        name="int4_matmul",
    )

    def epilogue(*i: tirx.Var) -> tirx.PrimExpr:
        y = acc[i] + _f32(bias[i[-1]]) if bias is not None else acc[i]
        return y.astype(x.dtype)

    return te.compute(acc.shape, epilogue, name="int4_linear")


def int4_embedding(
    q: te.Tensor,
    scales: te.Tensor,
    zeros: te.Tensor | None,
    ids: te.Tensor,
    group_size: int,
    dtype: str,
) -> te.Tensor:
    """Rows `ids` of dequant(q) in `dtype`: out[..., c] = scales[v, c // g] * (nibble(q, v, c) -
    zero), v = ids[...] clamped to the table, zero = zeros[v, c // g] or 8; q: u8[V, C/2].

    One injective stage that reads only the gathered rows (T x C/2 bytes, not the table).
    """
    vocab, hidden = q.shape[0], q.shape[1] * 2

    def row(v: tirx.PrimExpr) -> tirx.PrimExpr:
        # As Embedding's take(mode="clip"): an out-of-range id must not read outside the table.
        return tirx.max(tirx.min(v, (vocab - 1).astype(v.dtype)), tirx.const(0, v.dtype))

    def gather(*i: tirx.Var) -> tirx.PrimExpr:
        v, c = row(ids[i[:-1]]), i[-1]
        byte = q[v, c // 2]
        nibble = (byte >> ((c % 2) * 4).astype(byte.dtype)) & tirx.const(0xF, byte.dtype)
        g = c // group_size
        zero = _f32(zeros[v, g]) if zeros is not None else tirx.const(8.0, F32)
        return ((nibble.astype(F32) - zero) * _f32(scales[v, g])).astype(dtype)

    return te.compute((*ids.shape, hidden), gather, name="int4_embedding")
