"""Mixture-of-experts lowering: routing (softmax, top-k) and the routed SwiGLU experts as TE kernels.

Both follow ir/interpreter.py's numerics. The experts kernel gathers each token's k routed
experts' weights and runs small matmuls per (token, slot): the FLOPs of a dense MLP of k
experts, whatever the batch. Each token reads its experts' weights once, which is what decode
wants; prefill re-reads a popular expert once per token instead of once per batch (a grouped,
sorted-by-expert GEMM is the faster form there; see codegen/NOTES.md).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from tvm import relax as rx
from tvm import te, tirx

from ..ir import ops
from ..ir.graph import Node
from .context import LowerContext, tuple_items

F32 = "float32"
# An element of a [T, E] value, from a token and an expert index.
Value = Callable[[tirx.Var, tirx.Var], tirx.Expr]


def _f32(x: tirx.Expr) -> tirx.Expr:
    return x if x.dtype == F32 else x.astype(F32)


def _rounded(x: tirx.Expr, dtype: str) -> tirx.Expr:
    """An f32 value rounded to `dtype` and back: the interpreter rounds after every step."""
    return x if dtype == F32 else x.astype(dtype).astype(F32)


def moe_route(logits: te.Tensor, top_k: int, normalize: bool) -> list[te.Tensor]:
    """softmax(logits[T, E]) in f32, its top_k by descending probability (lower expert id
    first on ties, as a stable sort), optionally renormalized to sum 1.

    Top-k without a sort: expert e's rank is the number of experts ahead of it (a higher
    probability, or an equal one and a lower id); slot j holds the expert of rank j. That is
    E^2 comparisons per token, nothing beside the experts' matmuls.
    """
    t, e = logits.shape
    k1, k2, k3 = (te.reduce_axis((0, e), name=f"e{i}") for i in range(3))
    peak = te.compute((t,), lambda i: te.max(_f32(logits[i, k1]), axis=k1), name="peak")
    total = te.compute(
        (t,), lambda i: te.sum(tirx.exp(_f32(logits[i, k2]) - peak[i]), axis=k2), name="total"
    )
    probs = te.compute(
        (t, e), lambda i, x: tirx.exp(_f32(logits[i, x]) - peak[i]) / total[i], name="probs"
    )

    def ahead(i: tirx.Var, x: tirx.Var, y: tirx.Var) -> tirx.Expr:
        return tirx.any(probs[i, y] > probs[i, x], tirx.all(probs[i, y] == probs[i, x], y < x))

    rank = te.compute(
        (t, e),
        lambda i, x: te.sum(tirx.if_then_else(ahead(i, x, k3), 1, 0), axis=k3),
        name="rank",
    )

    def by_rank(value: Value, dtype: str, name: str) -> te.Tensor:
        """[T, k]: value(token, expert) of the expert of rank j; one term of each sum is non-zero."""
        x = te.reduce_axis((0, e), name=f"{name}_e")
        zero = tirx.const(0, dtype)
        return te.compute(
            (t, top_k),
            lambda i, j: te.sum(tirx.if_then_else(rank[i, x] == j, value(i, x.var), zero), axis=x),
            name=name,
        )

    ids = by_rank(lambda i, x: x.astype("int32"), "int32", "ids")
    picked = by_rank(lambda i, x: probs[i, x], F32, "picked")
    if normalize:
        s = te.reduce_axis((0, top_k), name="s")
        norm = te.compute((t,), lambda i: te.sum(picked[i, s], axis=s), name="norm")
        weights = te.compute(
            (t, top_k), lambda i, j: (picked[i, j] / norm[i]).astype(logits.dtype), name="weights"
        )
    else:
        weights = te.compute(
            (t, top_k), lambda i, j: picked[i, j].astype(logits.dtype), name="weights"
        )
    return [weights, ids]


def moe_experts(
    x: te.Tensor,
    weights: te.Tensor,
    ids: te.Tensor,
    gate: te.Tensor,
    up: te.Tensor | None,
    down: te.Tensor,
) -> te.Tensor:
    """out[t] = sum over slots j of weights[t, j] * down[e] @ (silu(gate[e] @ x[t]) * up[e] @ x[t]),
    e = ids[t, j]. With `up` None, `gate` is the fused [E, 2I, C] (gate rows first).

    Rounded where the interpreter rounds, and summed over a token's experts in ascending
    expert id (the interpreter's, and Hugging Face's, order), so f16/bf16 agree too.
    """
    t, c = x.shape
    top_k = int(ids.shape[1])
    num_experts, _, inter = down.shape
    dtype = x.dtype

    def expert(i: tirx.Var, j: tirx.Var) -> tirx.Expr:
        # Clamped: an id outside 0..E-1 must not read outside the weights.
        return tirx.max(tirx.min(ids[i, j], tirx.const(int(num_experts) - 1, "int32")), 0)

    kc = te.reduce_axis((0, c), name="kc")
    up_rows = up if up is not None else gate
    up_offset = 0 if up is not None else inter
    gate_out = te.compute(
        (t, top_k, inter),
        lambda i, j, n: te.sum(_f32(x[i, kc]) * _f32(gate[expert(i, j), n, kc]), axis=kc),
        name="moe_gate",
    )
    ku = te.reduce_axis((0, c), name="ku")
    up_out = te.compute(
        (t, top_k, inter),
        lambda i, j, n: te.sum(
            _f32(x[i, ku]) * _f32(up_rows[expert(i, j), n + up_offset, ku]), axis=ku
        ),
        name="moe_up",
    )

    def swiglu(i: tirx.Var, j: tirx.Var, n: tirx.Var) -> tirx.Expr:
        g = _rounded(gate_out[i, j, n], dtype)
        silu = _rounded(g / (tirx.const(1.0, F32) + tirx.exp(-g)), dtype)
        return _rounded(silu * _rounded(up_out[i, j, n], dtype), dtype)

    hidden = te.compute((t, top_k, inter), swiglu, name="moe_hidden")
    ki = te.reduce_axis((0, inter), name="ki")
    down_out = te.compute(
        (t, top_k, c),
        lambda i, j, m: te.sum(hidden[i, j, ki] * _f32(down[expert(i, j), m, ki]), axis=ki),
        name="moe_down",
    )
    scaled = te.compute(
        (t, top_k, c),
        lambda i, j, m: _rounded(_rounded(down_out[i, j, m], dtype) * _f32(weights[i, j]), dtype),
        name="moe_scaled",
    )
    # A token's slots are in weight order; order[i, j] is slot j's place by expert id
    # (top-k ids are distinct). The sum is unrolled over places to round after each add.
    ks = te.reduce_axis((0, top_k), name="ks")
    order = te.compute(
        (t, top_k),
        lambda i, j: te.sum(tirx.if_then_else(ids[i, ks] < ids[i, j], 1, 0), axis=ks),
        name="moe_order",
    )
    total = _slot_at(order, scaled, 0)
    for place in range(1, top_k):
        total = _rounded_add(total, _slot_at(order, scaled, place), dtype, f"moe_sum{place}")
    return te.compute((t, c), lambda i, m: total[i, m].astype(dtype), name="moe_experts")


def _slot_at(order: te.Tensor, scaled: te.Tensor, place: int) -> te.Tensor:
    """scaled[t, j, :] of the slot j whose expert comes `place`-th by id."""
    t, top_k, c = scaled.shape
    kp = te.reduce_axis((0, top_k), name=f"kp{place}")
    zero = tirx.const(0.0, F32)
    return te.compute(
        (t, c),
        lambda i, m: te.sum(
            tirx.if_then_else(order[i, kp] == place, scaled[i, kp, m], zero), axis=kp
        ),
        name=f"moe_term{place}",
    )


def _rounded_add(a: te.Tensor, b: te.Tensor, dtype: str, name: str) -> te.Tensor:
    return te.compute(a.shape, lambda i, m: _rounded(a[i, m] + b[i, m], dtype), name=name)


def lower_moe_route(ctx: LowerContext, node: Node, args: list[rx.Expr]) -> Sequence[rx.Expr]:
    op = node.op
    assert isinstance(op, ops.MoERoute)
    out = ctx.emit_te(moe_route, args[0], op.top_k, op.normalize, name="moe_route")
    return tuple_items(ctx, out, 2)


def lower_moe_experts(ctx: LowerContext, node: Node, args: list[rx.Expr]) -> Sequence[rx.Expr]:
    op = node.op
    assert isinstance(op, ops.MoEExperts)
    if op.fused_gate_up:
        x, weights, ids, gate_up, down = args
        gate, up = gate_up, None
    else:
        x, weights, ids, gate, up, down = args
    return (ctx.emit_te(moe_experts, x, weights, ids, gate, up, down, name="moe_experts"),)
