"""Every lowered op against the numpy interpreter, from one graph compiled once for llvm.

The tiny decoder covers the paged path; this graph covers the rest: non-paged attention (GQA,
sliding window), int4 linear, rotary with scaling and a partial rotary dim, GELU, softmax,
layout ops, casts and an f16 chain that rounds where the interpreter does.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from ferrumc.codegen.build import build
from ferrumc.codegen.targets import TARGETS
from ferrumc.ir import DType, GraphBuilder, Module, RopeScaling, TensorType, ops
from ferrumc.ir.graph import Value
from ferrumc.ir.interpreter import run_graph
from ferrumc.runtime.library import Library

F32, F16 = DType.f32, DType.f16
SEQ = 7
# f32 outputs agree to accumulation order; f16 ones to about one f16 ulp at magnitude ~4.
ATOL = {F32: 2e-5, F16: 8e-3}


def _ops_graph() -> Module:
    b = GraphBuilder("ops")
    tokens = b.input("tokens", TensorType(DType.i32, ("seq",)))
    positions = b.input("positions", TensorType(DType.i32, ("seq",)))
    x = b.input("x", TensorType(F32, ("seq", 32)))
    outs: dict[str, Value] = {}

    def e(op: ops.Op, *ins: Value) -> Value:
        return b.emit(op, *ins)  # type: ignore[return-value]

    emb = e(ops.Embedding(), b.weight("table", F32, (16, 32)), tokens)
    outs["add"] = a = e(ops.Add(), x, emb)
    outs["gelu"] = e(ops.GELU(), a)
    outs["gelu_tanh"] = e(ops.GELU(approximate="tanh"), a)
    outs["softmax"] = e(ops.Softmax(axis=-1), a)
    outs["swiglu"] = e(ops.Mul(), e(ops.SiLU(), x), emb)
    q4 = b.weight("q4", DType.u4, (24, 32))
    outs["int4_zeros_bias"] = e(
        ops.Int4Linear(group_size=16, has_zeros=True, has_bias=True),
        x,
        q4,
        b.weight("scales16", F32, (24, 2)),
        b.weight("zeros16", F32, (24, 2)),
        b.weight("bias24", F32, (24,)),
    )
    outs["int4"] = e(ops.Int4Linear(group_size=32), x, q4, b.weight("scales32", F32, (24, 1)))
    # Act-order: x's columns gathered by a permutation; f16 scales as GPTQ stores them.
    outs["int4_perm"] = e(
        ops.Int4Linear(group_size=16, has_zeros=True, has_perm=True),
        x,
        q4,
        b.weight("scales16h", F16, (24, 2)),
        b.weight("zeros16", F32, (24, 2)),
        b.weight("perm32", DType.i32, (32,)),
    )
    heads = e(ops.Reshape((-1, 4, 8)), x)  # [T, 4, 8]
    outs["transpose"] = e(ops.Transpose((1, 0, 2)), heads)
    outs["concat"] = e(ops.Concat(axis=-1), x, emb)
    q = e(ops.Reshape((-1, 4, 8)), e(ops.Linear(), x, b.weight("wq", F32, (32, 32))))
    k = e(ops.Reshape((-1, 2, 8)), e(ops.Linear(), x, b.weight("wk", F32, (16, 32))))
    v = e(ops.Reshape((-1, 2, 8)), e(ops.Linear(), x, b.weight("wv", F32, (16, 32))))
    rope = ops.Rotary(theta=500.0, rotary_dim=4, scaling=RopeScaling(kind="linear", factor=2.0))
    q, k = e(rope, q, positions), e(rope, k, positions)
    outs["rotary"] = q
    scale = 1 / math.sqrt(8)
    outs["attention"] = e(ops.Attention(num_heads=4, num_kv_heads=2, scale=scale), q, k, v)
    outs["attention_window"] = e(
        ops.Attention(num_heads=4, num_kv_heads=2, scale=scale, sliding_window=3), q, k, v
    )
    # An f16 chain: norm, linear with bias, rotary and silu all round to f16 as the interpreter does.
    h = e(ops.Cast(F16), x)
    h = e(ops.RMSNorm(eps=1e-5), h, b.weight("norm16", F16, (32,)))
    h = e(ops.Linear(has_bias=True), h, b.weight("w16", F16, (32, 32)), b.weight("b16", F16, (32,)))
    h = e(ops.Rotary(theta=10000.0, rotary_dim=8), e(ops.Reshape((-1, 4, 8)), h), positions)
    outs["f16_chain"] = e(ops.SiLU(), h)
    outs["f16_back"] = e(ops.Cast(F32), outs["f16_chain"])
    return Module({"ops": b.build(outs)})


def _weights(module: Module) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    out = {}
    for name, t in module.weight_types().items():
        if t.dtype is DType.u4:
            out[name] = rng.integers(0, 256, (t.shape[0], t.shape[1] // 2), dtype=np.uint8)
        elif t.dtype is DType.i32:  # a permutation
            out[name] = rng.permutation(t.shape[0]).astype(np.int32)
        elif name.startswith("scales"):
            out[name] = (0.05 * rng.random(t.shape) + 0.01).astype(t.dtype.numpy)
        else:
            out[name] = (0.5 * rng.standard_normal(t.shape)).astype(t.dtype.numpy)
    return out


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    module = _ops_graph()
    weights = _weights(module)
    rng = np.random.default_rng(3)
    inputs = {
        "tokens": rng.integers(0, 16, SEQ).astype(np.int32),
        "positions": np.arange(5, 5 + SEQ, dtype=np.int32),
        "x": rng.standard_normal((SEQ, 32)).astype(np.float32),
    }
    built = build(module, TARGETS["llvm"], tmp_path_factory.mktemp("ops"))
    got = Library(built.library, weights).run("ops", inputs)
    want = run_graph(module.graphs["ops"], inputs, weights)
    return module.graphs["ops"], got, want


@pytest.mark.parametrize(
    "name",
    [
        "add",
        "gelu",
        "gelu_tanh",
        "softmax",
        "swiglu",
        "int4_zeros_bias",
        "int4",
        "int4_perm",
        "transpose",
        "concat",
        "rotary",
        "attention",
        "attention_window",
        "f16_chain",
        "f16_back",
    ],
)
def test_output_matches_the_interpreter(results, name):
    graph, got, want = results
    dtype = graph.outputs[name].tensor.dtype
    assert got[name].dtype == want[name].dtype and got[name].shape == want[name].shape
    diff = np.abs(got[name].astype(np.float64) - want[name].astype(np.float64)).max()
    tol = ATOL[F16] if name.startswith("f16") else ATOL[dtype]
    assert diff <= tol, f"{name}: max abs diff {diff}"
