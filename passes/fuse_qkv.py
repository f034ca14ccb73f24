"""fuse-qkv: linears that read the same input through compile-time weights become one linear + split.

Before                                   After
  %q = linear(%x, %wq)                     %w = concat(%wq, %wk, %wv) axis=0
  %k = linear(%x, %wk)                     %y = linear(%x, %w)
  %v = linear(%x, %wv)                     %q, %k, %v = split(%y) axis=-1 sizes=[Nq,Nk,Nv]

One GEMM instead of three reads `x` once and fills the GPU better. The rule is generic (any >= 2
linears sharing an input), so it fuses q/k/v in every architecture; the concat is weight-only
and lift-weight-transforms turns it into one derived weight at compile time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..ir.graph import Graph, GraphBuilder, Node, Value
from ..ir.ops import LINEAR
from .base import Pass, PassContext
from .patterns import (
    Early,
    fuse_linears,
    rewrite,
    shared_input_slots,
    weight_only_nodes,
    weight_sources,
)

# The output projection is never fused: it reads the final norm alone, and concatenating the
# vocabulary-sized matrix with anything would only copy it. It is the linear that produces the
# logits, or reads the output head (the embedding, when tied) by its canonical name.
LM_HEAD_WEIGHTS = ("lm_head.weight", "embed.weight")
LOGITS = "logits"


def is_lm_head(node: Node, graph: Graph) -> bool:
    if graph.outputs.get(LOGITS) == node.out:
        return True
    return any(w.name in LM_HEAD_WEIGHTS for w in weight_sources(node.inputs[1]))


def fusion_key(node: Node) -> tuple[object, ...]:
    """What linears reading one input must share to fuse: the op (bias-ness; for int4 the group
    size, zeros and perm-ness), every weight's dtype, and the very same perm value (int4)."""
    shared = tuple(node.inputs[i] for i in shared_input_slots(node.op))
    return (node.op, tuple(v.tensor.dtype for v in node.inputs[1:]), shared)


def linear_groups(graph: Graph) -> list[list[Node]]:
    """Groups of >= 2 fusible linears with the same input and fusion key, in graph order."""
    weight_only = weight_only_nodes(graph)
    groups: dict[tuple[object, ...], list[Node]] = {}
    for node in graph.nodes:
        op = node.op
        if not isinstance(op, LINEAR) or node.inputs[0].node in weight_only:
            continue
        if any(v.node not in weight_only for v in node.inputs[1:]):
            continue  # a weight computed at run time cannot be concatenated ahead of time
        if is_lm_head(node, graph):
            continue
        groups.setdefault((node.inputs[0], *fusion_key(node)), []).append(node)
    return [g for g in groups.values() if len(g) >= 2]


@dataclass(frozen=True)
class FuseQKV(Pass):
    """Fuse every group of linears sharing an input into one linear on concatenated weights."""

    name: ClassVar[str] = "fuse-qkv"

    def run(self, graph: Graph, ctx: PassContext) -> Graph:
        groups = linear_groups(graph)
        if not groups:
            return graph
        group_of = {n: g for g in groups for n in g}
        piece: dict[Node, Value] = {}

        def rule(
            node: Node, ins: tuple[Value, ...], b: GraphBuilder, early: Early
        ) -> tuple[Value, ...] | None:
            group = group_of.get(node)
            if group is None:
                return None
            if node is group[0]:  # the fused linear stands where the first of the group stood
                piece.update(zip(group, fuse_linears(b, ins[0], group, early), strict=True))
            return (piece[node],)

        return rewrite(graph, rule)
