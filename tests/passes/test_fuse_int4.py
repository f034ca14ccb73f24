"""fuse-qkv and fuse-gate-up on int4 linears: q, scales, zeros, bias concatenate along N; a perm
is shared, so only linears reading the same perm value (and with one op) fuse."""

from __future__ import annotations

import numpy as np
import pytest

from ferrumc.ir import GraphBuilder, ops
from ferrumc.ir.graph import Graph, Value
from ferrumc.ir.int4 import pack_int4
from ferrumc.ir.interpreter import run_graph
from ferrumc.ir.types import DType, TensorType
from ferrumc.passes.fuse_gate_up import FuseGateUp
from ferrumc.passes.fuse_qkv import FuseQKV

F32, F16, I32 = DType.f32, DType.f16, DType.i32
K, G = 32, 16
RNG = np.random.default_rng(0)


def int4(b: GraphBuilder, x: Value, name: str, n: int, perm: str | None, g: int = G) -> Value:
    op = ops.Int4Linear(group_size=g, has_zeros=True, has_perm=perm is not None, has_bias=True)
    ins = [
        x,
        b.weight(f"{name}.qweight", DType.u4, (n, K)),
        b.weight(f"{name}.scales", F16, (n, K // g)),
        b.weight(f"{name}.zeros", F32, (n, K // g)),
    ]
    if perm is not None:
        ins.append(b.weight(perm, I32, (K,)))
    return b.emit(op, *ins, b.weight(f"{name}.bias", F32, (n,)))  # type: ignore[return-value]


def qkv_graph(perms: tuple[str | None, ...], k_group: int = G) -> Graph:
    b = GraphBuilder("g")
    x = b.input("x", TensorType(F32, ("seq", K)))
    q = int4(b, x, "q", 16, perms[0])
    k = int4(b, x, "k", 8, perms[1], k_group)
    v = int4(b, x, "v", 8, perms[2])
    return b.build({"q": q, "k": k, "v": v})


def weights(graph: Graph) -> dict[str, np.ndarray]:
    out = {}
    for name, t in graph.weight_types().items():
        if t.dtype is DType.u4:
            out[name] = pack_int4(RNG.integers(0, 16, t.shape))
        elif t.dtype is I32:
            out[name] = RNG.permutation(K).astype(np.int32)
        elif name.endswith(".zeros"):
            out[name] = RNG.integers(0, 16, t.shape).astype(np.float32)
        else:
            out[name] = RNG.standard_normal(t.shape).astype(t.dtype.numpy)
    return out


def assert_same_numbers(before: Graph, after: Graph) -> None:
    w = weights(before)
    x = {"x": RNG.standard_normal((5, K)).astype(np.float32)}
    want, got = run_graph(before, x, w), run_graph(after, x, w)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("perm", [None, "qkv.perm"])
def test_int4_qkv_with_one_perm_fuse(perm: str | None) -> None:
    before = qkv_graph((perm, perm, perm))
    after = FuseQKV()(before)
    (fused,) = [n for n in after.nodes if isinstance(n.op, ops.Int4Linear)]
    assert fused.op == ops.Int4Linear(G, has_zeros=True, has_perm=perm is not None, has_bias=True)
    assert fused.inputs[1].tensor == TensorType(DType.u4, (32, K))
    if perm is not None:  # the perm is read as it is, not concatenated
        assert fused.inputs[4].node.op == ops.Weight(perm, TensorType(I32, (K,)))
    assert after.count(ops.Concat) == 4  # q, scales, zeros, bias
    assert_same_numbers(before, after)
    assert str(FuseQKV()(after)) == str(after)  # idempotent


@pytest.mark.parametrize(
    ("perms", "k_group", "unfused"),
    [
        (("p", "p", "other"), G, 1),  # v's columns are ordered differently
        ((None, None, "p"), G, 1),
        ((None, None, None), 32, 1),  # k is quantized in groups of 32
    ],
)
def test_int4_linears_that_differ_do_not_fuse(perms, k_group, unfused) -> None:
    before = qkv_graph(perms, k_group)
    after = FuseQKV()(before)
    assert after.count(ops.Int4Linear) == 1 + unfused
    assert_same_numbers(before, after)


def test_int4_gate_up_fuse_with_a_shared_perm_only() -> None:
    def mlp(perm_up: str) -> Graph:
        b = GraphBuilder("g")
        x = b.input("x", TensorType(F32, ("seq", K)))
        gate, up = int4(b, x, "gate", 24, "p"), int4(b, x, "up", 24, perm_up)
        return b.build({"h": b.emit(ops.Mul(), b.emit(ops.SiLU(), gate), up)})  # type: ignore[arg-type]

    before = mlp("p")
    after = FuseGateUp()(before)
    assert after.count(ops.Int4Linear) == 1 and after.count(ops.Split) == 1
    assert_same_numbers(before, after)
    assert FuseGateUp()(mlp("q")).count(ops.Int4Linear) == 2


@pytest.mark.parametrize("dtype", [DType.f32, DType.bf16])
def test_cast_compute_dtype_keeps_fused_int4_scales_and_zeros_as_stored(dtype: DType) -> None:
    from ferrumc.passes.cast_compute_dtype import CastComputeDType

    fused = FuseQKV()(qkv_graph((None, None, None)))
    after = CastComputeDType(dtype)(fused)
    (linear,) = [n for n in after.nodes if isinstance(n.op, ops.Int4Linear)]
    scales, zeros, bias = linear.inputs[2], linear.inputs[3], linear.inputs[4]
    assert scales.tensor.dtype is F16 and zeros.tensor.dtype is F32  # as the checkpoint has them
    assert bias.tensor.dtype is dtype  # other float weights do follow the compute dtype
    assert linear.inputs[0].tensor.dtype is dtype
    if dtype is DType.f32:
        assert_same_numbers(fused, after)
