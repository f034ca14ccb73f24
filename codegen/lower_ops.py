"""The lowering table: one function per IR op, from its Relax arguments to its Relax results.

High-level Relax ops where their numerics match ours (LegalizeOps turns them into TIR);
TE kernels (te_kernels.py) for rms_norm, rotary and int4 linear; TVM's paged KV cache for
paged_attention (kv_cache.py); MoE routing and experts in lower_moe.py.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from itertools import accumulate

from tvm import relax as rx

from ..ir import ops
from ..ir.graph import Node
from ..ir.rope import inv_freq
from . import te_kernels
from .context import LowerContext, cast, out_tensor, tuple_items, tvm_dtype
from .int4_cpu import emit_int4_linear
from .kv_cache import lower_paged_attention
from .linear_cpu import emit_linear
from .lower_moe import lower_moe_experts, lower_moe_route

F32 = "float32"

Lowering = Callable[[LowerContext, Node, list[rx.Expr]], Sequence[rx.Expr]]


def _embedding(ctx: LowerContext, node: Node, args: list[rx.Expr]) -> Sequence[rx.Expr]:
    table, ids = args
    # "clip" rather than "fast": an out-of-range id must not read outside the table.
    return (ctx.emit(rx.op.take(table, ids, axis=0, mode="clip")),)


def _linear(ctx: LowerContext, node: Node, args: list[rx.Expr]) -> Sequence[rx.Expr]:
    """x @ w.T (+ b); f16/bf16 accumulate in f32 (TVM's default would accumulate in f16)."""
    x, w, *bias = args
    dtype = x.ty.dtype
    w = cast(ctx, w, dtype)
    # CPU: our own GEMV/GEMM kernel (codegen/linear_cpu.py); dlight has no fast CPU rule.
    if ctx.target.device == "cpu":
        y = emit_linear(ctx.bb, x, w, bias[0] if bias else None, ctx.target.vector_bits)
        if y is not None:
            return (y,)
    if dtype == F32:
        return (ctx.emit(rx.op.linear(x, w, bias[0] if bias else None)),)
    y = ctx.emit(rx.op.matmul(x, rx.op.permute_dims(w), out_dtype=F32))
    if bias:
        y = ctx.emit(rx.op.add(y, cast(ctx, bias[0], F32)))
    return (cast(ctx, y, dtype),)


def _int4_linear(ctx: LowerContext, node: Node, args: list[rx.Expr]) -> Sequence[rx.Expr]:
    """Fused dequantize + matmul: our TIR kernel on CPU (codegen/int4_cpu.py), else a TE
    kernel that dlight's GPU rules schedule (and that serves group sizes the CPU kernel lacks).
    A swiglu linear whose kernel lacks the epilogue gets the split, SiLU and product after it."""
    op = node.op
    assert isinstance(op, ops.Int4Linear)
    x, q, scales, *rest = args
    zeros = rest.pop(0) if op.has_zeros else None
    perm = rest.pop(0) if op.has_perm else None
    bias = rest.pop(0) if op.has_bias else None
    y = None
    if ctx.target.device == "cpu":
        kernel = functools.partial(
            emit_int4_linear,
            ctx.bb,
            x,
            q,
            scales,
            zeros,
            perm,
            bias,
            op.group_size,
            ctx.target.vector_bits,
            ctx.int8_activations and "avx512_vnni" in ctx.target.features,
        )
        if op.swiglu and (fused := kernel(swiglu=True)) is not None:
            return (fused,)
        y = kernel(swiglu=False)
    if y is None:
        y = ctx.emit_te(
            te_kernels.int4_linear,
            x,
            q,
            scales,
            zeros,
            perm,
            bias,
            op.group_size,
            name="int4_linear",
        )
    if not op.swiglu:
        return (y,)
    gate, up = tuple_items(ctx, ctx.emit(rx.op.split(y, 2, axis=-1)), 2)
    return (ctx.emit(rx.op.multiply(_silu_of(ctx, gate), up)),)


def _int4_embedding(ctx: LowerContext, node: Node, args: list[rx.Expr]) -> Sequence[rx.Expr]:
    """Gather and dequantize the rows of an int4 table: one TE kernel reading T rows,
    scheduled by ParallelOuterLoops on llvm and by dlight's fallback on GPUs."""
    op = node.op
    assert isinstance(op, ops.Int4Embedding)
    q, scales, *rest = args
    zeros = rest.pop(0) if op.has_zeros else None
    (ids,) = rest
    return (
        ctx.emit_te(
            te_kernels.int4_embedding,
            q,
            scales,
            zeros,
            ids,
            op.group_size,
            tvm_dtype(op.dtype),
            name="int4_embedding",
        ),
    )


def _rms_norm(ctx: LowerContext, node: Node, args: list[rx.Expr]) -> Sequence[rx.Expr]:
    x, w = args
    return (ctx.emit_te(te_kernels.rms_norm, x, w, node.op.eps, name="rms_norm"),)  # type: ignore[attr-defined]


def _add_rms_norm(ctx: LowerContext, node: Node, args: list[rx.Expr]) -> Sequence[rx.Expr]:
    x, residual, w = args
    s = ctx.emit(rx.op.add(x, residual))
    return (ctx.emit_te(te_kernels.rms_norm, s, w, node.op.eps, name="rms_norm"), s)  # type: ignore[attr-defined]


def _rotary(ctx: LowerContext, node: Node, args: list[rx.Expr]) -> Sequence[rx.Expr]:
    op = node.op
    assert isinstance(op, ops.Rotary)
    x, positions = args
    freqs, factor = inv_freq(op.theta, op.rotary_dim, op.scaling)
    dtype = x.ty.dtype
    # One cos/sin table per (positions, frequencies, dtype) in the function, for every layer.
    key = ("rotary_table", positions, freqs.tobytes(), factor, dtype)
    if key not in ctx.memo:
        ctx.memo[key] = ctx.emit_te(
            te_kernels.rotary_table,
            positions,
            rx.const(freqs, F32),
            factor,
            dtype,
            name="rotary_table",
        )
    table = ctx.memo[key]
    return (ctx.emit_te(te_kernels.rotary, x, table, op.rotary_dim, name="rotary"),)


def _attention(ctx: LowerContext, node: Node, args: list[rx.Expr]) -> Sequence[rx.Expr]:
    """Causal attention of one sequence with its own k, v: softmax(q k^T * scale) v in f32."""
    op = node.op
    assert isinstance(op, ops.Attention)
    q, k, v = args
    dtype = q.ty.dtype
    group = op.num_heads // op.num_kv_heads
    qh = ctx.emit(rx.op.permute_dims(q, [1, 0, 2]))  # [Hq, T, D]
    kh = ctx.emit(rx.op.repeat(rx.op.permute_dims(k, [1, 2, 0]), group, axis=0))  # [Hq, D, T]
    vh = ctx.emit(rx.op.repeat(rx.op.permute_dims(v, [1, 0, 2]), group, axis=0))  # [Hq, T, D]
    scores = ctx.emit(rx.op.matmul(qh, kh, out_dtype=F32))  # [Hq, T, T]
    scores = ctx.emit(rx.op.multiply(scores, rx.const(op.scale, F32)))
    masked = ctx.emit_te(te_kernels.causal_mask, scores, op.sliding_window, name="causal_mask")
    probs = ctx.emit(rx.op.nn.softmax(masked, axis=-1))
    out = ctx.emit(rx.op.matmul(cast(ctx, probs, dtype), vh, out_dtype=F32))  # [Hq, T, D]
    return (cast(ctx, ctx.emit(rx.op.permute_dims(out, [1, 0, 2])), dtype),)


def _binary(relax_op: Callable[[rx.Expr, rx.Expr], rx.Expr]) -> Lowering:
    return lambda ctx, node, args: (ctx.emit(relax_op(*args)),)


def _in_f32(ctx: LowerContext, relax_op: Callable[[rx.Expr], rx.Expr], x: rx.Expr) -> rx.Expr:
    """relax_op applied in f32 and cast back, as the interpreter computes activations."""
    return cast(ctx, ctx.emit(relax_op(cast(ctx, x, F32))), x.ty.dtype)


def _silu_of(ctx: LowerContext, x: rx.Expr) -> rx.Expr:
    if ctx.target.device == "cpu":  # a vector polynomial exp instead of libm's, per element
        return ctx.emit_te(te_kernels.silu, x, name="silu")
    return _in_f32(ctx, rx.op.nn.silu, x)


def _silu(ctx: LowerContext, node: Node, args: list[rx.Expr]) -> Sequence[rx.Expr]:
    return (_silu_of(ctx, args[0]),)


def _gelu(ctx: LowerContext, node: Node, args: list[rx.Expr]) -> Sequence[rx.Expr]:
    approximate = node.op.approximate  # type: ignore[attr-defined]
    fn = rx.op.nn.gelu_tanh if approximate == "tanh" else rx.op.nn.gelu
    return (_in_f32(ctx, fn, args[0]),)


def _softmax(ctx: LowerContext, node: Node, args: list[rx.Expr]) -> Sequence[rx.Expr]:
    axis = node.op.axis  # type: ignore[attr-defined]
    return (_in_f32(ctx, lambda x: rx.op.nn.softmax(x, axis=axis), args[0]),)


def _cast(ctx: LowerContext, node: Node, args: list[rx.Expr]) -> Sequence[rx.Expr]:
    return (ctx.emit(rx.op.astype(args[0], tvm_dtype(node.op.dtype))),)  # type: ignore[attr-defined]


def _reshape(ctx: LowerContext, node: Node, args: list[rx.Expr]) -> Sequence[rx.Expr]:
    # The inferred output type has -1 resolved, with symbolic dims kept by name.
    return (ctx.emit(rx.op.reshape(args[0], ctx.shape(out_tensor(node).shape))),)


def _transpose(ctx: LowerContext, node: Node, args: list[rx.Expr]) -> Sequence[rx.Expr]:
    return (ctx.emit(rx.op.permute_dims(args[0], list(node.op.perm))),)  # type: ignore[attr-defined]


def _concat(ctx: LowerContext, node: Node, args: list[rx.Expr]) -> Sequence[rx.Expr]:
    return (ctx.emit(rx.op.concat(args, axis=node.op.axis)),)  # type: ignore[attr-defined]


def _split(ctx: LowerContext, node: Node, args: list[rx.Expr]) -> Sequence[rx.Expr]:
    op = node.op
    assert isinstance(op, ops.Split)
    if len(op.sizes) == 1:
        return (args[0],)
    cuts = list(accumulate(op.sizes))[:-1]
    pieces = ctx.emit(rx.op.split(args[0], cuts, axis=op.axis))
    return tuple_items(ctx, pieces, len(op.sizes))


LOWERINGS: dict[type[ops.Op], Lowering] = {
    ops.Embedding: _embedding,
    ops.Linear: _linear,
    ops.Int4Linear: _int4_linear,
    ops.Int4Embedding: _int4_embedding,
    ops.RMSNorm: _rms_norm,
    ops.AddRMSNorm: _add_rms_norm,
    ops.Rotary: _rotary,
    ops.Attention: _attention,
    ops.PagedAttention: lower_paged_attention,
    ops.Add: _binary(rx.op.add),
    ops.Mul: _binary(rx.op.multiply),
    ops.SiLU: _silu,
    ops.GELU: _gelu,
    ops.Softmax: _softmax,
    ops.Cast: _cast,
    ops.Reshape: _reshape,
    ops.Transpose: _transpose,
    ops.Concat: _concat,
    ops.Split: _split,
    ops.MoERoute: lower_moe_route,
    ops.MoEExperts: lower_moe_experts,
}

# Ops with no lowering yet, and why; lowering a graph that uses one raises UnsupportedModel.
NOT_YET_LOWERED: dict[type[ops.Op], str] = {
    ops.QuantizeInt4: "weight-only: lift-weight-transforms computes it at compile time",
}
