"""select-logit-rows: compute logits only for the token rows the caller asks for.

Before                                      After
                                              %rows = input logit_rows : i32[rows]
  %h = ...            : f32[seq, C]           %g = embedding(%h, %rows) : f32[rows, C]
  %l = linear(%h, %w) : f32[seq, V]           %l = linear(%g, %w)      : f32[rows, V]
  %o = cast(%l)       (optional casts)        %o = cast(%l)
  return logits=%o                            return logits=%o

A prefill samples from the last token of each sequence only, so the output projection over
the other rows ((tokens - sequences) x vocab x hidden multiply-adds, a quarter of a 0.5B model's
prefill) and their logits' memory are wasted. Codegen applies this to the compiled prefill entry;
the runtime passes the rows (each chunk's last, or all of them to check every row).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..ir.graph import Graph, GraphBuilder, Node, Value, rebuild
from ..ir.ops import LINEAR, Cast, Embedding, Input
from ..ir.types import DType, TensorType
from .base import Pass, PassContext

LOGIT_ROWS_INPUT = "logit_rows"
LOGITS_OUTPUT = "logits"
ROWS_DIM = "rows"


def logits_projection(graph: Graph) -> Node | None:
    """The linear (float or int4) that produces the `logits` output (through casts), if its input
    is [tokens, C]."""
    value = graph.outputs.get(LOGITS_OUTPUT)
    while value is not None and isinstance(value.node.op, Cast):
        value = value.node.inputs[0]
    if value is None or not isinstance(value.node.op, LINEAR):  # float or int4 head
        return None
    x = value.node.inputs[0].type
    return value.node if isinstance(x, TensorType) and x.rank == 2 else None


@dataclass(frozen=True)
class SelectLogitRows(Pass):
    """Gather the requested rows (input `logit_rows`) before the projection to the vocabulary."""

    name: ClassVar[str] = "select-logit-rows"

    def run(self, graph: Graph, ctx: PassContext) -> Graph:
        if any(isinstance(n.op, Input) and n.op.name == LOGIT_ROWS_INPUT for n in graph.nodes):
            return graph
        projection = logits_projection(graph)
        if projection is None:
            return graph
        rows_type = TensorType(DType.i32, (ROWS_DIM,))

        def rule(node: Node, ins: tuple[Value, ...], b: GraphBuilder) -> tuple[Value, ...] | None:
            if node is not projection:
                return None
            rows = b.input(LOGIT_ROWS_INPUT, rows_type)
            picked = b.emit(Embedding(), ins[0], rows)
            return (b.emit(node.op, picked, *ins[1:]),)  # type: ignore[return-value]

        return rebuild(graph, rule)
