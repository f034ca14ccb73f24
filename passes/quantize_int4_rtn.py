"""quantize-int4-rtn: float linears on compile-time weights become int4 linears, each weight rounded
to the nearest of 16 levels per group (numerics in ir/int4_quantize.py).

Before                                  After (symmetric; asymmetric adds zeros)
  %y = linear(%x, %w)                     %q, %s = quantize_int4(%w) group_size=32 dtype="f16"
                                          %y = int4_linear(%x, %q, %s) group_size=32

quantize_int4 reads only weights, so lift-weight-transforms computes it once at compile time
and the bundle stores the 4-bit codes and the scales, never the float matrix.

Which linears: those whose weight is known at compile time (a checkpoint weight, or a concat /
cast of them: the pipeline runs this after the fusions, so fused qkv and gate_up are one matrix).
Left float:
- the output head, tied to the embedding or not: the logits are where rounding error costs
  most, and GPTQ checkpoints (gptqmodel's default) keep lm_head float too, so a model quantized
  here compares linear for linear with one quantized there;
- MoE routers (a few rows whose errors flip expert choices), and MoE experts (not linears);
- linears already int4 (a GPTQ checkpoint or a Q4_0 GGUF loaded as it is): never re-quantized.
Scales and zeros are stored in f16, as llama.cpp's Q4_0 and GPTQ checkpoints store them: 4.5
bits per weight at group 32 where f32 scales would make 5, for a decode that reads every byte
(the scale's rounding is a 1e-3 relative change, far below a 4-bit step); bf16 models keep bf16.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from ..ir.graph import Graph, GraphBuilder, Node, Value, rebuild
from ..ir.int4 import Int4Format
from ..ir.ops import Int4Linear, Linear, MoERoute, QuantizeInt4
from ..ir.types import DType
from .base import Pass, PassContext
from .fuse_qkv import is_lm_head
from .lift_weight_transforms import derive_name
from .patterns import emit1, emitn, weight_only_nodes


def scales_dtype(weight: DType) -> DType:
    """The dtype of the scales and zeros of a weight in `weight`'s dtype."""
    return DType.bf16 if weight is DType.bf16 else DType.f16


def quantizable_linears(graph: Graph, fmt: Int4Format, by: Pass) -> list[Node]:
    """The float linears to quantize, in graph order; raises PassError when one's input dim is not
    a multiple of the group size (naming the weight)."""
    weight_only = weight_only_nodes(graph)
    users = graph.users()
    found = []
    for node in graph.nodes:
        if type(node.op) is not Linear or node.inputs[0].node in weight_only:
            continue
        if node.inputs[1].node not in weight_only or is_lm_head(node, graph):
            continue
        if any(isinstance(u.op, MoERoute) for u in users.get(node.out, [])):
            continue
        w = node.inputs[1]
        k = w.tensor.shape[1]
        if k % fmt.group_size:  # type: ignore[operator]
            sizes = [g for g in Int4Format.GROUP_SIZES if k % g == 0]  # type: ignore[operator]
            fix = f"--group-size {sizes[0]}" if sizes else "leave this model in float (-q none)"
            raise by.error(
                f"{derive_name(w)} has {k} input columns, not a multiple of group size "
                f"{fmt.group_size}; use {fix}",
            )
        found.append(node)
    return found


def replace_linear(
    b: GraphBuilder, node: Node, ins: tuple[Value, ...], fmt: Int4Format, *int4: Value
) -> tuple[Value, ...]:
    """int4_linear(x, *int4, bias?) standing for the linear `node`, whose new inputs are `ins`."""
    has_bias = node.op.has_bias  # type: ignore[attr-defined]
    op = Int4Linear(group_size=fmt.group_size, has_zeros=not fmt.symmetric, has_bias=has_bias)
    return (emit1(b, op, ins[0], *int4, *ins[2:]),)


@dataclass(frozen=True)
class QuantizeInt4RTN(Pass):
    """Round-to-nearest int4, computed at compile time from the float weights."""

    name: ClassVar[str] = "quantize-int4-rtn"
    format: Int4Format = field(default_factory=Int4Format)

    def run(self, graph: Graph, ctx: PassContext) -> Graph:
        targets = set(quantizable_linears(graph, self.format, self))
        if not targets:
            return graph
        g, symmetric = self.format.group_size, self.format.symmetric

        def rule(node: Node, ins: tuple[Value, ...], b: GraphBuilder) -> tuple[Value, ...] | None:
            if node not in targets:
                return None
            quantize = QuantizeInt4(g, symmetric, scales_dtype(ins[1].tensor.dtype))
            return replace_linear(b, node, ins, self.format, *emitn(b, quantize, ins[1]))

        return rebuild(graph, rule)
