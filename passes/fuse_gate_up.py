"""fuse-gate-up: the gate and up projections of a gated MLP (dense or MoE) become one matrix.

Dense, act in (silu, gelu):               MoE:
  %g = linear(%x, %wg)                      %y = moe_experts(%x, %r, %ids, %gate, %up, %down)
  %u = linear(%x, %wu)                    becomes
  %h = mul(act(%g), %u)                     %gu = concat(%gate, %up) axis=1
becomes                                     %y = moe_experts(%x, %r, %ids, %gu, %down) fused_gate_up=true
  %w = concat(%wg, %wu) axis=0
  %g, %u = split(linear(%x, %w)) axis=-1 sizes=[I,I]

Gate rows come first, the layout moe_experts(fused_gate_up) and the kernels expect.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..ir.graph import Graph, GraphBuilder, Node, Value
from ..ir.ops import GELU, LINEAR, Concat, MoEExperts, Mul, SiLU
from .base import Pass, PassContext
from .fuse_qkv import fusion_key
from .patterns import Early, emit1, emitn, fuse_linears, rewrite, weight_only_nodes

GLU_ACTIVATIONS = (SiLU, GELU)


def _glu_linears(mul: Node) -> tuple[Node, Node] | None:
    """(gate, up) of mul(act(gate), up) or mul(up, act(gate)) when both are linears."""
    a, b = (v.node for v in mul.inputs)
    for act, up in ((a, b), (b, a)):
        if isinstance(act.op, GLU_ACTIVATIONS):
            gate = act.inputs[0].node
            if isinstance(gate.op, LINEAR) and isinstance(up.op, LINEAR) and gate is not up:
                return gate, up
    return None


def _fusible(gate: Node, up: Node, weight_only: set[Node]) -> bool:
    """One run-time input, the same fusion key (op, weight dtypes, int4 perm), weights known at
    compile time."""
    x = gate.inputs[0]
    return (
        up.inputs[0] == x
        and x.node not in weight_only
        and all(v.node in weight_only for v in (*gate.inputs[1:], *up.inputs[1:]))
        and fusion_key(gate) == fusion_key(up)
    )


def gate_up_pairs(graph: Graph) -> list[tuple[Node, Node]]:
    """The fusible (gate, up) linear pairs of gated MLPs, each linear in one pair at most."""
    weight_only = weight_only_nodes(graph)
    claimed: set[Node] = set()
    pairs = []
    for node in graph.nodes:
        match = _glu_linears(node) if isinstance(node.op, Mul) else None
        if match and claimed.isdisjoint(match) and _fusible(*match, weight_only):
            pairs.append(match)
            claimed.update(match)
    return pairs


def _unfused_experts(graph: Graph) -> list[Node]:
    weight_only = weight_only_nodes(graph)
    return [
        n
        for n in graph.nodes
        if isinstance(n.op, MoEExperts)
        and not n.op.fused_gate_up
        and n.inputs[3].node in weight_only
        and n.inputs[4].node in weight_only
    ]


@dataclass(frozen=True)
class FuseGateUp(Pass):
    """Fuse gate/up linear pairs of gated MLPs and the gate/up stacks of MoE experts."""

    name: ClassVar[str] = "fuse-gate-up"

    def run(self, graph: Graph, ctx: PassContext) -> Graph:
        pairs = gate_up_pairs(graph)
        experts = set(_unfused_experts(graph))
        if not pairs and not experts:
            return graph
        pair_of = {n: p for p in pairs for n in p}
        piece: dict[Node, Value] = {}

        def rule(
            node: Node, ins: tuple[Value, ...], b: GraphBuilder, early: Early
        ) -> tuple[Value, ...] | None:
            if node in experts:
                x, weights, ids, gate, up, down = ins
                gate_up = emit1(b, Concat(axis=1), gate, up)  # [E, 2I, C], gate rows first
                return emitn(b, MoEExperts(fused_gate_up=True), x, weights, ids, gate_up, down)
            pair = pair_of.get(node)
            if pair is None:
                return None
            if pair[0] not in piece:  # the first of the two in graph order emits the fused linear
                piece.update(zip(pair, fuse_linears(b, ins[0], pair, early), strict=True))
            return (piece[node],)

        return rewrite(graph, rule)
