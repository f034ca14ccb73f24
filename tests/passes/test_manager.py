"""The pass manager: verification on entry and after each pass, IR dumps in order, timings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest

from ferrumc.errors import PassError, VerifyError
from ferrumc.ir import DType, Graph, Node, parse_graph, print_graph
from ferrumc.ir.ops import SiLU
from ferrumc.passes.base import Pass, PassContext
from ferrumc.passes.cast_compute_dtype import CastComputeDType
from ferrumc.passes.eliminate_dead_code import EliminateDeadCode
from ferrumc.passes.fuse_qkv import FuseQKV
from ferrumc.passes.manager import PassManager

GRAPH = """
graph forward(%x: f32[seq,8]) {
  %a.weight = weight : f32[4,8]
  %0 = linear(%x, %a.weight) has_bias=false : f32[seq,4]
  %b.weight = weight : f32[4,8]
  %1 = linear(%x, %b.weight) has_bias=false : f32[seq,4]
  %dead.weight = weight : f32[4,8]
  return a=%0, b=%1
}
"""


@dataclass(frozen=True)
class BreakTypes(Pass):
    """A buggy pass: appends a silu whose stored type disagrees with what it infers."""

    name: ClassVar[str] = "break-types"

    def run(self, graph: Graph, ctx: PassContext) -> Graph:
        v = next(iter(graph.outputs.values()))
        bad = Node(SiLU(), (v,), (v.tensor.with_dtype(DType.f16),))
        return Graph(graph.name, [*graph.nodes, bad], {**graph.outputs, "bad": bad.out})


def test_runs_passes_in_order_and_times_them():
    manager = PassManager([FuseQKV(), EliminateDeadCode()])
    out = manager.run(parse_graph(GRAPH))
    assert [t.name for t in manager.timings] == ["fuse-qkv", "eliminate-dead-code"]
    assert all(t.seconds >= 0 for t in manager.timings)
    assert "dead.weight" not in out.weight_types()
    assert "concat" in print_graph(out)


def test_a_pass_that_breaks_the_graph_is_named():
    manager = PassManager([FuseQKV(), BreakTypes()])
    with pytest.raises(VerifyError, match=r"pass break-types produced an invalid graph") as e:
        manager.run(parse_graph(GRAPH))
    assert "stored types f16[seq,4] differ from inferred f32[seq,4]" in str(e.value)


def test_an_invalid_input_graph_is_reported_before_any_pass():
    graph = BreakTypes()(parse_graph(GRAPH))
    manager = PassManager([FuseQKV()])
    with pytest.raises(VerifyError, match="the graph given to the pass manager is invalid"):
        manager.run(graph)
    assert manager.timings == []


def test_dump_dir_holds_the_ir_after_each_pass_in_order(tmp_path):
    passes = [FuseQKV(), CastComputeDType(DType.f16), EliminateDeadCode()]
    out = PassManager(passes, dump_dir=tmp_path / "ir").run(parse_graph(GRAPH))
    files = sorted(p.name for p in (tmp_path / "ir").iterdir())
    assert files == [
        "00-input.ir",
        "01-fuse-qkv.ir",
        "02-cast-compute-dtype.ir",
        "03-eliminate-dead-code.ir",
    ]
    assert (tmp_path / "ir" / "00-input.ir").read_text() == print_graph(parse_graph(GRAPH))
    last = (tmp_path / "ir" / "03-eliminate-dead-code.ir").read_text()
    assert last == print_graph(out) == print_graph(parse_graph(last))


def test_the_broken_graph_is_dumped_before_the_error(tmp_path):
    with pytest.raises(VerifyError):
        PassManager([BreakTypes()], dump_dir=tmp_path).run(parse_graph(GRAPH))
    assert "silu" in (tmp_path / "01-break-types.ir").read_text()


def test_pass_context_gives_weights_or_says_how_to():
    with pytest.raises(
        PassError, match=r"pass gptq needs the weight 'a.weight'.*PassContext\(load_weight="
    ):
        PassContext().weight("a.weight", by="gptq")
    ctx = PassContext(load_weight=lambda name: np.zeros(3, np.float32))
    assert ctx.weight("a.weight", by="gptq").shape == (3,)


def test_pass_prints_as_its_name_and_options():
    assert str(FuseQKV()) == "fuse-qkv"
    assert str(CastComputeDType(DType.f16)) == "cast-compute-dtype{dtype=f16}"
