"""Lowering to Relax without compiling: table coverage, entry signatures, weights as parameters."""

from __future__ import annotations

import pytest
import tvm

from ferrumc.codegen.lower import lower_module
from ferrumc.codegen.lower_ops import LOWERINGS, NOT_YET_LOWERED
from ferrumc.codegen.targets import TARGETS
from ferrumc.errors import UnsupportedModel
from ferrumc.ir import OPS, DType, GraphBuilder, Module, TensorType, ops
from ferrumc.tests.codegen.tiny_paged import TinyConfig, tiny_paged_module

LLVM = TARGETS["llvm"]


def test_every_op_is_lowered_or_listed_as_not_yet():
    non_sources = {cls for cls in OPS.values() if cls not in ops.SOURCES}
    assert not set(LOWERINGS) & set(NOT_YET_LOWERED)
    assert non_sources == set(LOWERINGS) | set(NOT_YET_LOWERED)
    # Every op is lowered; a new op without a lowering must say why here. quantize_int4 reads
    # only weights: lift-weight-transforms computes it at compile time, no library runs it.
    assert set(NOT_YET_LOWERED) == {ops.QuantizeInt4}


@pytest.fixture(scope="module")
def lowered():
    return lower_module(tiny_paged_module(), LLVM)


def test_entry_functions_take_tokens_positions_cache_and_params(lowered):
    names = {gv.name_hint for gv in lowered.mod.get_global_vars()}
    assert {"prefill", "decode", "create_kv_cache"} <= names
    # The compiled prefill also takes the rows to project to logits (select-logit-rows).
    for entry, token_dim, extra in (("prefill", "seq", ["logit_rows"]), ("decode", "batch", [])):
        fn = lowered.mod[entry]
        inputs = ["tokens", "positions", "kv_cache", *extra]
        assert [p.name for p in fn.params] == [*inputs, "params"]
        tokens = fn.params[0].ty
        assert tokens.dtype == "int32" and str(tokens.shape[0]) == token_dim
        assert type(fn.params[2].ty).__name__ in ("ObjectType", "AnyType")  # opaque object
        assert len(fn.params[-1].ty.fields) == len(lowered.weight_names)
        assert lowered.signatures[entry] == (tuple(inputs), ("logits",))


def test_weights_are_parameters_not_constants(lowered):
    assert set(lowered.weight_names) == set(tiny_paged_module().weight_types())
    # Only rotary's inverse frequencies are embedded: one f32 vector per function.
    c = TinyConfig()
    assert 0 < lowered.constant_bytes() <= 4 * 2 * (c.head_dim // 2)


def test_one_rotary_table_serves_every_layer(lowered):
    """cos and sin depend on the positions only: one table per function, not per layer."""
    c = TinyConfig()
    for entry in ("prefill", "decode"):
        callees = []

        def visit(expr, callees=callees):
            if isinstance(expr, tvm.relax.Call) and expr.op.name == "relax.call_tir":
                callees.append(expr.args[0].name_hint)

        tvm.relax.analysis.post_order_visit(lowered.mod[entry], visit)
        assert callees.count("rotary_table") == 1
        assert sum(name.startswith("rotary") for name in callees) == 1 + 2 * c.layers  # q and k


def test_cache_layout_comes_from_the_graphs(lowered):
    c = TinyConfig()
    layout = lowered.kv_cache
    assert (layout.num_layers, layout.num_heads, layout.num_kv_heads, layout.head_dim) == (
        c.layers,
        c.heads,
        c.kv_heads,
        c.head_dim,
    )
    assert layout.dtype == "float32"


def _moe_graph() -> Module:
    b = GraphBuilder("prefill")
    x = b.input("x", TensorType(DType.f32, ("seq", 8)))
    router = b.weight("router", DType.f32, (4, 8))
    weights, ids = b.emit(ops.MoERoute(top_k=2), b.emit(ops.Linear(), x, router))
    return Module({"prefill": b.build({"weights": weights, "ids": ids})})


def test_not_yet_lowered_ops_are_named_in_the_error(monkeypatch):
    monkeypatch.delitem(LOWERINGS, ops.MoERoute)
    monkeypatch.setitem(NOT_YET_LOWERED, ops.MoERoute, "routing kernels are planned")
    with pytest.raises(UnsupportedModel, match="prefill: moe_route: routing kernels are planned"):
        lower_module(_moe_graph(), LLVM)


def test_different_sliding_windows_become_a_sequence_length_limit():
    module = tiny_paged_module()
    for graph in module.graphs.values():
        for node in graph.nodes:
            if isinstance(node.op, ops.PagedAttention):
                window = 6 if node.op.layer == 1 else 9
                node.op = ops.PagedAttention(**{**node.op.attrs(), "sliding_window": window})
    assert lower_module(module, LLVM).kv_cache.max_sequence_length == 6
