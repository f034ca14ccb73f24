"""fuse-swiglu: a gated MLP's SiLU and product become the epilogue of its int4 gate/up linear.

Before                                                   After
  %y = int4_linear(%x, %q, %s) : f32[T,2I]                 %h = int4_linear(%x, %q, %s)
  %g, %u = split(%y) axis=-1 sizes=[I,I]                        swiglu=true : f32[T,I]
  %a = silu(%g)
  %h = mul(%a, %u)

The same values (ops.Int4Linear: swiglu). fuse-gate-up leaves the gate rows first, the
layout the epilogue reads. On CPU the kernel computes the activation from its accumulators
(codegen/int4_cpu.py), so neither the [T, 2I] projection nor a kernel of its own for the
activation remains; where no kernel has the epilogue, lowering emits the three ops again.

Applies where the linear's output is read only by the split, the gate piece only by the
SiLU, and the SiLU and the up piece only by the product.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

from ..ir.graph import Graph, GraphBuilder, Node, Value, rebuild
from ..ir.ops import Int4Linear, Mul, SiLU, Split
from .base import Pass, PassContext
from .patterns import emit1


def _only_reader(users: dict[Value, list[Node]], value: Value, node: Node) -> bool:
    return users.get(value, []) == [node]


def swiglu_chains(graph: Graph) -> dict[Node, tuple[Node, Node, Node]]:
    """int4 linear -> its (split, silu, mul) for each chain that applies."""
    users = graph.users()
    outputs = set(graph.outputs.values())
    found: dict[Node, tuple[Node, Node, Node]] = {}
    for mul in graph.nodes:
        if not isinstance(mul.op, Mul):
            continue
        for act_in, up in (mul.inputs, reversed(mul.inputs)):
            act = act_in.node
            split = up.node
            if not isinstance(act.op, SiLU) or not isinstance(split.op, Split):
                continue
            linear = split.inputs[0].node
            if not isinstance(linear.op, Int4Linear) or linear.op.swiglu:
                continue
            y = split.inputs[0].tensor
            sizes = split.op.sizes
            if split.op.axis not in (-1, y.rank - 1) or len(sizes) != 2 or sizes[0] != sizes[1]:
                continue
            gate, up_piece = split.outputs
            if act.inputs[0] != gate or up != up_piece:
                continue
            chain_values = (linear.outputs[0], gate, up_piece, act.outputs[0])
            if any(v in outputs for v in chain_values):
                continue
            if not (
                _only_reader(users, linear.outputs[0], split)
                and _only_reader(users, gate, act)
                and _only_reader(users, act.outputs[0], mul)
                and _only_reader(users, up_piece, mul)
            ):
                continue
            found[linear] = (split, act, mul)
            break
    return found


@dataclass(frozen=True)
class FuseSwiGLU(Pass):
    """Fold silu(gate) * up into the int4 gate/up linear (see the module doc)."""

    name: ClassVar[str] = "fuse-swiglu"

    def run(self, graph: Graph, ctx: PassContext) -> Graph:
        chains = swiglu_chains(graph)
        if not chains:
            return graph
        fused: dict[Node, Value] = {}  # each chain's mul -> the fused linear's output
        dropped = {n for split, act, _ in chains.values() for n in (split, act)}

        def rule(node: Node, ins: tuple[Value, ...], b: GraphBuilder) -> tuple[Value, ...] | None:
            if node in chains:
                mul = chains[node][2]
                op = dataclasses.replace(node.op, swiglu=True)  # type: ignore[type-var]
                fused[mul] = emit1(b, op, *ins)
                # A placeholder: only the split reads it, and the split is dropped.
                return (fused[mul],)
            if node in dropped:  # placeholders again, read only by what is dropped or replaced
                return ins * len(node.types)
            return (fused[node],) if node in fused else None

        return rebuild(graph, rule)
