"""fuse-add-rmsnorm: a residual add followed by an RMS norm becomes one add_rms_norm.

Before                                   After
  %s = add(%x, %r)                         %n, %s = add_rms_norm(%x, %r, %w) eps=..
  %n = rms_norm(%s, %w) eps=..

Other users of %s read the second output. One kernel reads x and r once instead of writing the
sum and reading it back for the norm.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..ir.graph import Graph, GraphBuilder, Node, Value
from ..ir.ops import Add, AddRMSNorm, RMSNorm
from .base import Pass, PassContext
from .patterns import Early, emitn, rewrite, weight_only_nodes


def add_norm_pairs(graph: Graph) -> dict[Node, Node]:
    """add -> the first rms_norm that normalizes its sum (with a compile-time weight)."""
    weight_only = weight_only_nodes(graph)
    pairs: dict[Node, Node] = {}
    for node in graph.nodes:
        if not isinstance(node.op, RMSNorm):
            continue
        s, w = node.inputs
        add = s.node
        if not isinstance(add.op, Add) or add in pairs or add in weight_only:
            continue
        if w.node not in weight_only:  # the fused op stands where the add did, maybe before w
            continue
        x, r = add.inputs
        if x.type == r.type:  # add_rms_norm does not broadcast
            pairs[add] = node
    return pairs


@dataclass(frozen=True)
class FuseAddRMSNorm(Pass):
    """Fuse add + rms_norm pairs into add_rms_norm, which also returns the sum."""

    name: ClassVar[str] = "fuse-add-rmsnorm"

    def run(self, graph: Graph, ctx: PassContext) -> Graph:
        pairs = add_norm_pairs(graph)
        if not pairs:
            return graph
        normed: dict[Node, Value] = {}

        def rule(
            node: Node, ins: tuple[Value, ...], b: GraphBuilder, early: Early
        ) -> tuple[Value, ...] | None:
            norm = pairs.get(node)
            if norm is not None:
                # Emitted where the add stood: users of the sum may come before the norm.
                op = AddRMSNorm(eps=norm.op.eps)  # type: ignore[attr-defined]
                out, total = emitn(b, op, ins[0], ins[1], early(norm.inputs[1]))
                normed[norm] = out
                return (total,)
            if node in normed:
                return (normed[node],)
            return None

        return rewrite(graph, rule)
