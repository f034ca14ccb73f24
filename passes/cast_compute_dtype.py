"""cast-compute-dtype: compute every float activation in one dtype (f32, f16 or bf16).

- float weights not already in `dtype` are read through `cast(w)`, a weight-only node that
  lift-weight-transforms folds at compile time (the bundle stores the cast weight);
- existing float casts are retargeted to `dtype`, and dropped where that makes them no-ops;
- float inputs are cast on entry, a KV cache input is retyped to `dtype`;
- float outputs are cast back to their original dtype (logits stay f32);
- integer and packed (u4) tensors are left alone, and so are int4 scales and zero points: the
  kernels widen them once per group, and storing them wider would add bytes to every weight read;
- int4 embeddings, whose output dtype is an attribute, produce `dtype`.
Every other op takes its dtype from its inputs, so re-inference does the rest.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

from ..ir.graph import Graph, GraphBuilder, Node, Value, rebuild
from ..ir.ops import Cast, Concat, Input, Int4Embedding, Int4Linear, Weight
from ..ir.types import FLOAT_DTYPES, DType, KVCacheType, TensorType
from .base import Pass, PassContext
from .patterns import emit1


@dataclass(frozen=True)
class CastComputeDType(Pass):
    """Make `dtype` the graph's compute dtype; outputs keep their types."""

    name: ClassVar[str] = "cast-compute-dtype"
    dtype: DType = DType.f32

    def __post_init__(self) -> None:
        if self.dtype not in FLOAT_DTYPES:
            valid = ", ".join(d.value for d in FLOAT_DTYPES)
            raise self.error(f"dtype {self.dtype.value} is not a float dtype; use one of {valid}")

    def run(self, graph: Graph, ctx: PassContext) -> Graph:
        dtype = self.dtype
        int4_params = _int4_parameters(graph)

        def rule(node: Node, ins: tuple[Value, ...], b: GraphBuilder) -> tuple[Value, ...] | None:
            op = node.op
            if (
                isinstance(op, Weight)
                and _needs_cast(op.type, dtype)
                and node.out not in int4_params
            ):
                return (emit1(b, Cast(dtype), emit1(b, op)),)
            if (
                isinstance(op, Input)
                and isinstance(op.type, KVCacheType)
                and op.type.dtype != dtype
            ):
                return (b.input(op.name, dataclasses.replace(op.type, dtype=dtype)),)
            if isinstance(op, Input) and _needs_cast(op.type, dtype):
                return (emit1(b, Cast(dtype), emit1(b, op)),)
            if isinstance(op, Int4Embedding) and op.dtype != dtype:
                return (emit1(b, dataclasses.replace(op, dtype=dtype), *ins),)
            if isinstance(op, Cast) and op.dtype.is_float:
                x = ins[0]
                if x.tensor.dtype == dtype:
                    return (x,)  # a no-op once the input is already in `dtype`
                return (emit1(b, Cast(dtype), x),)
            return None

        out = rebuild(graph, rule)
        return _restore_output_dtypes(out, graph)


def _int4_parameters(graph: Graph) -> set[Value]:
    """The weights read as an int4 linear's or embedding's scales or zero points, directly or
    through the concatenations that fuse-qkv and fuse-gate-up put in front of them."""
    found: set[Value] = set()
    stack = [
        v
        for node in graph.nodes
        if isinstance(node.op, (Int4Linear, Int4Embedding))
        for v in _scales_and_zeros(node)
    ]
    while stack:
        v = stack.pop()
        if isinstance(v.node.op, Weight):
            found.add(v)
        elif isinstance(v.node.op, Concat):
            stack.extend(v.node.inputs)
    return found


def _scales_and_zeros(node: Node) -> tuple[Value, ...]:
    op = node.op
    assert isinstance(op, (Int4Linear, Int4Embedding))
    first = 2 if isinstance(op, Int4Linear) else 1  # after x (linear) or the codes
    return node.inputs[first : first + 1 + op.has_zeros]


def _needs_cast(t: object, dtype: DType) -> bool:
    return isinstance(t, TensorType) and t.dtype.is_float and t.dtype != dtype


def _restore_output_dtypes(graph: Graph, original: Graph) -> Graph:
    """Append a cast for each float output whose dtype changed, so the signature stays the same."""
    nodes, outputs = list(graph.nodes), dict(graph.outputs)
    for name, v in graph.outputs.items():
        want = original.outputs[name].type
        if isinstance(want, TensorType) and want.dtype.is_float and v.type != want:
            op = Cast(want.dtype)
            cast = Node(op, (v,), op.verify([v.type]))
            nodes.append(cast)
            outputs[name] = cast.out
    return Graph(graph.name, nodes, outputs)
