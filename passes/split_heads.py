"""split-heads: a fused projection is reshaped into heads first, then split, not the reverse.

Before                                                After
  %p = linear(%x, %w) : f32[T,960]                      %p = linear(%x, %w) : f32[T,960]
  %q, %k, %v = split(%p) axis=-1 sizes=[576,192,192]    %h = reshape(%p) shape=[-1,15,64]
  %q3 = reshape(%q) shape=[-1,9,64]                     %q3, %k3, %v3 = split(%h) axis=1 sizes=[9,3,3]
  %k3 = reshape(%k) shape=[-1,3,64]
  %v3 = reshape(%v) shape=[-1,3,64]

The same values. A reshape of a whole tensor is a view, but reshapes of a split's pieces stand
between the split and its readers: TVM then runs the split as its own kernel writing three
tensors, and each reshape as a VM call. Split by heads, the pieces go straight to the rotary
and the KV cache's concat, which fuse with it into one kernel that reads the projection once
(in a SmolLM2 decode step, 14 fewer VM instructions and one kernel fewer per layer).

Applies where a split along the last axis of a 2-D tensor has pieces read only by reshapes
to [rows, heads_i, D], with one D for all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..ir.graph import Graph, GraphBuilder, Node, Value, rebuild
from ..ir.ops import Reshape, Split
from .base import Pass, PassContext
from .patterns import emit1, emitn


def head_splits(graph: Graph) -> dict[Node, tuple[int, tuple[Node, ...]]]:
    """split -> (the head dim D, the reshape reading each piece) for each split that applies."""
    users = graph.users()
    outputs = set(graph.outputs.values())
    found: dict[Node, tuple[int, tuple[Node, ...]]] = {}
    for node in graph.nodes:
        if not isinstance(node.op, Split) or len(node.types) < 2:
            continue
        x = node.inputs[0].tensor
        if x.rank != 2 or node.op.axis not in (-1, 1) or not isinstance(x.shape[1], int):
            continue
        readers = [users.get(piece, []) for piece in node.outputs]
        if any(len(r) != 1 or not isinstance(r[0].op, Reshape) for r in readers):
            continue
        if any(piece in outputs for piece in node.outputs):
            continue
        shapes = [r[0].types[0].shape for r in readers]  # type: ignore[union-attr]
        dims = {s[2] if len(s) == 3 and s[0] == x.shape[0] else None for s in shapes}
        if len(dims) != 1 or not isinstance(d := dims.pop(), int):
            continue
        found[node] = (d, tuple(r[0] for r in readers))
    return found


@dataclass(frozen=True)
class SplitHeads(Pass):
    """Reshape a fused projection into heads before splitting it (see the module doc)."""

    name: ClassVar[str] = "split-heads"

    def run(self, graph: Graph, ctx: PassContext) -> Graph:
        splits = head_splits(graph)
        if not splits:
            return graph
        heads: dict[Node, Value] = {}  # an old reshape -> the new split's piece

        def rule(node: Node, ins: tuple[Value, ...], b: GraphBuilder) -> tuple[Value, ...] | None:
            if node in splits:
                d, reshapes = splits[node]
                total = node.inputs[0].tensor.shape[1]
                whole = emit1(b, Reshape((-1, total // d, d)), ins[0])  # type: ignore[operator]
                sizes = tuple(r.types[0].shape[1] for r in reshapes)  # type: ignore[union-attr]
                pieces = emitn(b, Split(axis=1, sizes=sizes), whole)  # type: ignore[arg-type]
                heads.update(zip(reshapes, pieces, strict=True))
                return ins * len(node.types)  # only the reshapes read them, and they are replaced
            if node in heads:
                return (heads[node],)
            return None

        return rebuild(graph, rule)
