"""TVM's own paged KV cache: the `create_kv_cache` entry function and the attention call into it.

The cache is `tvm.relax.frontend.nn.llm.kv_cache.TIRPagedKVCache`. Its constructor only
needs `BlockBuilder.current()` (it adds its TIR kernels with `bb.add_func` and returns an nn
Object wrapping a `vm.builtin.paged_attention_kv_cache_create` call), so a plain BlockBuilder
function can host it without going through nn.Module. Rotary is applied in our graph, so the
cache runs with RopeMode.NONE. The runtime then drives it with the `vm.builtin.kv_state_*`
global functions (runtime/vm.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace

import tvm
from tvm import relax as rx
from tvm import tirx
from tvm.relax.frontend.nn.llm.kv_cache import RopeMode, TIRPagedKVCache

from ..errors import UnsupportedModel
from ..ir.graph import Module, Node
from ..ir.ops import PagedAttention
from ..ir.types import KVCacheType
from .context import LowerContext, cast, out_tensor, tvm_dtype
from .targets import Target

CREATE_FUNCTION = "create_kv_cache"
# The entry function's arguments, each an R.Shape([n]) because the cache's kernels are
# specialized on them symbolically (the convention of TVM's nn exporter for `spec.Int`).
CREATE_ARGS = (
    "max_batch_size",
    "max_total_seq_len",
    "prefill_chunk_size",
    "page_size",
    "support_sliding_window",
)


@dataclass(frozen=True)
class CacheLayout:
    """What the cache is specialized on, read from the graphs' kvcache type and attention ops."""

    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    dtype: str
    # The sliding window every layer shares: the runtime creates the cache with sliding-window
    # support and gives each sequence a window of this size (runtime/sliding_window.py).
    sliding_window: int | None = None
    # Layers with different windows (or some without) cannot share TVM's one window per
    # sequence: the cache runs full attention, exact while a sequence is no longer than the
    # smallest window, and the runtime refuses longer sequences.
    max_sequence_length: int | None = None


def cache_layout(module: Module) -> CacheLayout | None:
    """The one layout every graph agrees on, or None when no graph uses a KV cache."""
    layouts: set[CacheLayout] = set()
    for graph in module.graphs.values():
        caches = [n.op.type for n in graph.inputs if isinstance(n.op.type, KVCacheType)]  # type: ignore[attr-defined]
        attns = [n.op for n in graph.nodes if isinstance(n.op, PagedAttention)]
        heads = {op.num_heads for op in attns}
        windows = {op.sliding_window for op in attns}
        if not caches:
            continue
        if len(caches) > 1 or len(heads) > 1:
            raise UnsupportedModel(
                f"graph {graph.name}: expected one kv_cache input and one query head count, "
                f"got caches {caches} and heads {sorted(heads)}"
            )
        c = caches[0]
        num_heads = heads.pop() if heads else c.num_kv_heads
        dtype = tvm_dtype(c.dtype)
        window, limit = _window_and_limit(windows)
        layouts.add(
            CacheLayout(c.num_layers, num_heads, c.num_kv_heads, c.head_dim, dtype, window, limit)
        )
    if len(layouts) > 1:
        raise UnsupportedModel(
            f"graphs disagree on the KV cache layout: {sorted(map(str, layouts))}"
        )
    return layouts.pop() if layouts else None


def _window_and_limit(windows: set[int | None]) -> tuple[int | None, int | None]:
    """(the shared sliding window, the sequence length limit) of a graph's attention layers.

    The runtime gives a sequence a cache window of W - 1 (runtime/sliding_window.py), and TVM
    needs a window of at least 1, so W = 1 falls back to the limit.
    """
    sized = {w for w in windows if w is not None}
    if not sized:
        return None, None
    if len(windows) == 1 and min(sized) >= 2:
        return min(sized), None
    return None, min(sized)


def create_function_module(layout: CacheLayout, target: Target) -> tvm.IRModule:
    """An IRModule holding `create_kv_cache` and the cache's TIR kernels, to merge into ours.

    Building it parses about fifteen TVMScript kernels (seconds), so it is made once per
    layout and target in a process.
    """
    # Windows are set at run time and do not change the module: share it across them.
    layout = replace(layout, sliding_window=None, max_sequence_length=None)
    key = (layout, json.dumps([target.target, target.host], sort_keys=True))
    if key not in _MODULES:
        bb = rx.BlockBuilder()
        _add_create_function(bb, layout, target)
        _MODULES[key] = bb.finalize()
    return _MODULES[key]


# A memo of create_function_module (IRModules are immutable values).
_MODULES: dict[tuple[CacheLayout, str], tvm.IRModule] = {}


def _add_create_function(bb: rx.BlockBuilder, layout: CacheLayout, target: Target) -> None:
    """Add `create_kv_cache(max_batch_size, max_total_seq_len, prefill_chunk_size, page_size,
    support_sliding_window)` (each an R.Shape([n])) returning the cache object."""
    sizes = {name: tirx.Var(name, "int64") for name in CREATE_ARGS}
    params = [rx.Var(name, rx.ShapeType(values=[v])) for name, v in sizes.items()]
    with bb.function(CREATE_FUNCTION, params):
        cache = TIRPagedKVCache(
            attn_kind="mha",
            max_batch_size=sizes["max_batch_size"],
            max_total_seq_len=sizes["max_total_seq_len"],
            prefill_chunk_size=sizes["prefill_chunk_size"],
            page_size=sizes["page_size"],
            support_sliding_window=sizes["support_sliding_window"],
            layer_partition=rx.ShapeExpr([0, layout.num_layers]),
            num_hidden_layers=layout.num_layers,
            num_attention_heads=layout.num_heads,
            num_key_value_heads=layout.num_kv_heads,
            qk_head_dim=layout.head_dim,
            v_head_dim=layout.head_dim,
            mla_original_qk_head_dim=0,
            mla_original_v_head_dim=0,
            rope_mode=RopeMode.NONE,
            rope_scale=1,
            rope_theta=10000,
            rope_scaling={},
            rope_ext_factors=rx.prim_value(0),
            rotary_dim=layout.head_dim,
            enable_disaggregation=False,
            dtype=layout.dtype,
            target=target.tvm_target(),
        )
        bb.emit_func_output(bb.emit(cache._expr, name_hint="kv_cache"))


def lower_paged_attention(
    ctx: LowerContext, node: Node, args: list[rx.Expr]
) -> tuple[rx.Expr, ...]:
    """Append k, v to the layer's pages and attend, through the cache's fused-qkv entry.

    The cache reads the batch (sequence ids, token counts) set by `kv_state_begin_forward`,
    and picks its prefill or decode kernels from it, so both forms lower alike. Sliding windows
    are the cache's, set per sequence at run time (see CacheLayout).
    """
    op = node.op
    assert isinstance(op, PagedAttention)
    q, k, v, cache = args
    qkv = ctx.emit(rx.op.concat([q, k, v], axis=1), "qkv")  # [T, Hq + 2 Hkv, D]
    out = out_tensor(node)
    # TVM's cache takes q, k, v and gives the output in the dtype it stores (CacheLayout.dtype).
    stored = node.inputs[3].type
    assert isinstance(stored, KVCacheType)
    qkv = cast(ctx, qkv, tvm_dtype(stored.dtype))
    attn = ctx.emit(
        rx.call_dps_packed(
            "vm.builtin.attention_kv_cache_attention_with_fused_qkv",
            [cache, rx.prim_value(op.layer), rx.prim_value(float(op.scale)), qkv],
            out_ty=ctx.relax_type(out.with_dtype(stored.dtype)),
        ),
        f"attn{op.layer}",
    )
    return (cast(ctx, attn, tvm_dtype(out.dtype)),)
