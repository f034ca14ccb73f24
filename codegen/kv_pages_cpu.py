"""The paged KV cache's two copy kernels for CPU, replacing TVM's per-element ones.

Every attention call of TVM's cache first splits the fused qkv into q, k and v
(`fused_rope`, registered as `tir_split_rotary`) and appends k and v to the pages
(`tir_kv_cache_transpose_append`). TVM writes both as one scalar loop over every element,
which our generic CPU rule parallelizes; the append's `position` binding then costs two
workspace allocations per element: ~15-25 us per call for the 384 elements of a decode step,
plus a thread-pool launch per kernel (~3-10 us on 2 shared cores). These keep the signatures
and copy a head's row in vector lanes, serially for the few tokens of a decode step (a copy of
a few KiB is cheaper than waking a thread) and in parallel over tokens for long chunks.
Rotary is applied in ferrumc's graph, so the split is a plain copy (apply_rope must be 0).
"""

from __future__ import annotations

from tvm import tirx
from tvm.script import tirx as T

# Tokens from which a copy kernel runs in parallel over tokens.
PARALLEL_TOKENS = 128


def split_qkv_kernel(h_q: int, h_kv: int, d: int, dtype: str) -> tirx.PrimFunc:
    """`fused_rope` without rotary: qkv[s, Hq + 2 Hkv, D] -> q[s, Hq, D], k, v[s, Hkv, D]."""

    @T.macro
    def split_row(qkv, q, k, v, s):
        for h in range(h_q):
            for dd in T.vectorized(d):
                q[s, h, dd] = qkv[s, h, dd]
        for h in range(h_kv):
            for dd in T.vectorized(d):
                k[s, h, dd] = qkv[s, h_q + h, dd]
            for dd in T.vectorized(d):
                v[s, h, dd] = qkv[s, h_q + h_kv + h, dd]

    @T.prim_func(s_tir=True)
    def fused_rope(
        var_qkv: T.handle,
        var_position_map: T.handle,
        var_q: T.handle,
        var_k: T.handle,
        var_v: T.handle,
        apply_rope: T.int64,
    ):
        T.func_attr({"tirx.is_scheduled": True, "tirx.noalias": True})
        seq_len = T.int32()
        position_map_elem_offset = T.int32()
        qkv = T.match_buffer(var_qkv, (seq_len, h_q + 2 * h_kv, d), dtype)
        q = T.match_buffer(var_q, (seq_len, h_q, d), dtype)
        k = T.match_buffer(var_k, (seq_len, h_kv, d), dtype)
        v = T.match_buffer(var_v, (seq_len, h_kv, d), dtype)
        position_map = T.match_buffer(  # noqa: F841 (part of the signature)
            var_position_map, (seq_len,), "int32", elem_offset=position_map_elem_offset
        )
        assert apply_rope == T.int64(0), "ferrumc's KV cache expects rotary in the graph"
        with T.sblock("split"):
            T.reads(qkv[0:seq_len, 0 : h_q + 2 * h_kv, 0:d])
            T.writes(q[0:seq_len, 0:h_q, 0:d], k[0:seq_len, 0:h_kv, 0:d], v[0:seq_len, 0:h_kv, 0:d])
            if seq_len >= PARALLEL_TOKENS:
                for s in T.parallel(seq_len):
                    split_row(qkv, q, k, v, s)
            else:
                for s in range(seq_len):
                    split_row(qkv, q, k, v, s)

    return fused_rope


def append_kernel(h_kv: int, d: int, dtype: str, page_size: int = 16) -> tirx.PrimFunc:
    """`tir_kv_cache_transpose_append`: token t's k and v rows to slot position_map[t]
    (page position // page_size, row position % page_size); -1 skips the token."""

    @T.macro
    def append_row(pages, k_data, v_data, position_map, t):
        pos: T.let[T.int32] = position_map[t]
        if pos != -1:
            for h in range(h_kv):
                for dd in T.vectorized(d):
                    pages[pos // page_size, 0, h, pos % page_size, dd] = k_data[t, h, dd]
                for dd in T.vectorized(d):
                    pages[pos // page_size, 1, h, pos % page_size, dd] = v_data[t, h, dd]

    @T.prim_func(s_tir=True)
    def tir_kv_cache_transpose_append(
        var_pages: T.handle,
        var_k_data: T.handle,
        var_v_data: T.handle,
        var_position_map: T.handle,
    ):
        T.func_attr({"tirx.is_scheduled": True, "tirx.noalias": True})
        ntoken = T.int64()
        num_pages = T.int64()
        pages_elem_offset = T.int64()
        position_map_elem_offset = T.int32()
        pages = T.match_buffer(
            var_pages, (num_pages, 2, h_kv, page_size, d), dtype, elem_offset=pages_elem_offset
        )
        k_data = T.match_buffer(var_k_data, (ntoken, h_kv, d), dtype)
        v_data = T.match_buffer(var_v_data, (ntoken, h_kv, d), dtype)
        position_map = T.match_buffer(
            var_position_map, (ntoken,), "int32", elem_offset=position_map_elem_offset
        )
        with T.sblock("append"):
            T.reads(
                k_data[0:ntoken, 0:h_kv, 0:d], v_data[0:ntoken, 0:h_kv, 0:d], position_map[0:ntoken]
            )
            T.writes(pages[0:num_pages, 0:2, 0:h_kv, 0:page_size, 0:d])
            if ntoken >= PARALLEL_TOKENS:
                for t in T.parallel(ntoken):
                    append_row(pages, k_data, v_data, position_map, t)
            else:
                for t in range(ntoken):
                    append_row(pages, k_data, v_data, position_map, t)

    return tir_kv_cache_transpose_append
