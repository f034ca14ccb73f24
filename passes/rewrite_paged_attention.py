"""rewrite-paged-attention: per-sequence attention becomes attention through a paged KV cache.

Every `attention(q, k, v)` becomes `paged_attention(q, k, v, %kv_cache)` with `layer` = its index
among the graph's attentions (graph order), the same heads, scale and window, and the given
form. The graph gains the input `kv_cache: kvcache<layers=L,kv_heads=..,head_dim=..,dtype of k>`
and is renamed after the form. For "decode" each sequence brings one token, so the token dim
"seq" of the inputs (and of reshape targets naming it) is renamed "batch".

`kv_dtype` stores the cache in another float dtype than k's (f16 pages for an f32 model: half
the cache memory, and half the bytes each decode step's attention reads). The attentions keep
their types; the cache rounds what it stores (the lowering casts around TVM's cache call).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..ir.graph import Graph, GraphBuilder, Node, Value, rebuild
from ..ir.ops import ATTENTION_FORMS, Attention, Input, PagedAttention, Reshape
from ..ir.types import Dim, DType, KVCacheType, Shape, TensorType
from .base import Pass, PassContext
from .patterns import emit1

KV_CACHE_INPUT = "kv_cache"
# Dtypes a cache may be stored in: those every target's attention kernels read.
KV_DTYPES = (DType.f32, DType.f16)
# The token dim the frontends name, and what it means in each form.
TOKEN_DIM = {"prefill": "seq", "decode": "batch"}


@dataclass(frozen=True)
class RewritePagedAttention(Pass):
    """Route every attention through the paged KV cache, for the prefill or the decode entry point."""

    name: ClassVar[str] = "rewrite-paged-attention"
    form: str = "prefill"
    kv_dtype: DType | None = None  # None: the dtype of the attentions' k

    def __post_init__(self) -> None:
        if self.form not in ATTENTION_FORMS:
            raise self.error(f"unknown form {self.form!r}; use one of {', '.join(ATTENTION_FORMS)}")
        if self.kv_dtype is not None and self.kv_dtype not in KV_DTYPES:
            raise self.error(
                f"cannot store the KV cache in {self.kv_dtype.value}; "
                f"use one of {', '.join(d.value for d in KV_DTYPES)}"
            )

    def run(self, graph: Graph, ctx: PassContext) -> Graph:
        attentions = [n for n in graph.nodes if isinstance(n.op, Attention)]
        if not attentions:
            return graph
        if any(isinstance(n.op, Input) and n.op.name == KV_CACHE_INPUT for n in graph.nodes):
            raise self.error(
                f"graph {graph.name} already has an input named {KV_CACHE_INPUT!r}; rename it"
            )
        cache = self._cache_type(attentions)
        layer_of = {n: i for i, n in enumerate(attentions)}
        rename = {TOKEN_DIM["prefill"]: TOKEN_DIM[self.form]}

        def rule(node: Node, ins: tuple[Value, ...], b: GraphBuilder) -> tuple[Value, ...] | None:
            op = node.op
            if isinstance(op, Attention):
                kv = b.input(KV_CACHE_INPUT, cache)
                paged = PagedAttention(
                    layer=layer_of[node],
                    num_heads=op.num_heads,
                    num_kv_heads=op.num_kv_heads,
                    scale=op.scale,
                    sliding_window=op.sliding_window,
                    form=self.form,
                )
                return (emit1(b, paged, *ins, kv),)
            if isinstance(op, Input) and isinstance(op.type, TensorType):
                return (b.input(op.name, op.type.with_shape(_renamed(op.type.shape, rename))),)
            if isinstance(op, Reshape):
                return (emit1(b, Reshape(_renamed(op.shape, rename)), *ins),)
            return None

        out = rebuild(graph, rule)
        return Graph(self.form, out.nodes, out.outputs)

    def _cache_type(self, attentions: list[Node]) -> KVCacheType:
        keys = [n.inputs[1].tensor for n in attentions]  # k: [T, Hkv, D]
        kinds = {(k.shape[1], k.shape[2], k.dtype) for k in keys}
        if len(kinds) != 1:
            found = ", ".join(f"{h} kv heads x {d} {t.value}" for h, d, t in sorted(kinds, key=str))
            raise self.error(
                f"attentions disagree on the KV layout ({found}); one paged cache needs one layout"
            )
        ((heads, head_dim, dtype),) = kinds
        dtype = self.kv_dtype or dtype
        return KVCacheType(len(attentions), heads, head_dim, dtype)  # type: ignore[arg-type]


def _renamed(shape: Shape, rename: dict[str, str]) -> Shape:
    out: list[Dim] = [rename.get(d, d) if isinstance(d, str) else d for d in shape]
    return tuple(out)
