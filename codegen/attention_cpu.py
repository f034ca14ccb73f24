"""Paged-KV-cache attention kernels for CPU, replacing TVM's single-threaded scalar ones.

TVM's CPU kernels (relax.frontend.nn.llm) loop serially over sequences and heads, one scalar
multiply at a time; its ragged prefill kernel scores every key, masked or not, and its paged
prefill kernel (a prompt's later chunks against the keys already cached) walks the whole
cache's capacity for every query row and head. These keep
their signatures and results (outputs and the base-2 log-sum-exp `lse` that TVM's merge
kernel reads), and instead:
- run in parallel over (query row, KV head) for prefill, the rows of a causal prefill paired
  first-with-last so both threads get equal work (decode: see attention_decode_cpu.py);
- handle the query heads of a KV head's group together, so each key and value row is loaded
  once per group;
- walk keys in blocks of 16 with an online softmax and stop at the causal limit; a block's
  16 scores come out as one vector (a transposing shuffle-add tree), its weights out of one
  vector exp2, its weighted value rows summed in registers (the helpers the decode kernel
  uses). Before (a horizontal sum and an exp2f call per key): SmolLM2's heads, 128 tokens,
  2 threads, the kernel alone 1099 -> 641 us; the prefill's attention calls 24-36 -> 15-20 ms
  of ~110-130 ms (three alternating pairs, VM instrument). A 1024-token SmolLM2 prompt
  (two chunks of 512, the second through the paged kernel): 12.8 -> 3.0 s to the first
  token. The sliding-window paged prefill stays TVM's.
Rotary embedding inside the cache is not supported (ferrumc applies it in the graph; the cache
is created with RopeMode.NONE): a call with rotary_mode != 0 fails its assertion.
The decode kernel is in attention_decode_cpu.py, the cache's split and append copies in
kv_pages_cpu.py; `replacement` maps TVM's kernels to all of them.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import tvm
from tvm import tirx
from tvm.script import tirx as T

from .attention_decode_cpu import (
    _lane_sum,
    decode_kernel,
    key_block_scores,
    value_block_sum,
)
from .kv_pages_cpu import append_kernel, split_qkv_kernel
from .tir_math import exp2

F32 = "float32"
LOG2E = math.log2(math.e)
# Keys per online-softmax step (the cache's page size for the paged kernels).
BLOCK = 16
# TVM's kernels start the running max at -5e4 and the running sum at 1: kept for equal results.
M_INIT, D_INIT = -5e4, 1.0


def _kv_row(buf, kind: int, base, hk, r: int, ramp, paged: bool):
    """Key (kind 0) or value (1) row r of a block: in a page (base its id, pages[page, kind,
    hk, r]) or in a ragged K or V buffer (the block starting at row base)."""
    return buf[base, kind, hk, r, ramp] if paged else buf[base + r, hk, ramp]


def _block_attention(group: int, d: int, lanes: int, dtype: str) -> Callable:
    """The T.macro attend(kb, vb, base, hk, q, o, s, m, den, top, rows, paged): one block of
    BLOCK keys (a page, or ragged rows base..) for each query head of a group, as the decode
    kernel does (attention_decode_cpu.py): the scores as one vector, one vector exp2 for the
    weights, the weighted value rows summed in registers, into the running max m, sum den and
    output o. Keys past `rows` score MASKED and their values are selected away (a page's
    unused rows hold garbage; a ragged partial block comes in zeroed scratch rows, since
    reading past a sequence's last key could read past the buffer and clamped row indices
    broke TVM's CSE pass)."""

    @T.macro
    def attend(kb, vb, base, hk, q, o, s, m, den, top, rows, paged):
        for g in range(group):
            s[g, T.Ramp(0, 1, BLOCK)] = key_block_scores(
                lambda ramp, g=g: q[g, ramp],
                lambda r, ramp: _kv_row(kb, 0, base, hk, r, ramp, paged),
                d, lanes, BLOCK, rows, dtype,
            )  # fmt: skip
            top[0] = T.max(m[g], _lane_sum(s[g, T.Ramp(0, 1, BLOCK)], BLOCK, T.Max))
            scale: T.let[T.float32] = exp2(m[g] - top[0])
            s[g, T.Ramp(0, 1, BLOCK)] = exp2(
                s[g, T.Ramp(0, 1, BLOCK)] - T.Broadcast(top[0], BLOCK), BLOCK
            )
            den[g] = den[g] * scale + _lane_sum(s[g, T.Ramp(0, 1, BLOCK)], BLOCK, T.Add)
            for c in T.unroll(d // lanes):
                o[g, T.Ramp(c * lanes, 1, lanes)] = o[g, T.Ramp(c * lanes, 1, lanes)] * T.Broadcast(
                    scale, lanes
                ) + value_block_sum(
                    lambda r, g=g: s[g, r],
                    lambda r, ramp: _kv_row(vb, 1, base, hk, r, ramp, paged),
                    d, lanes, BLOCK, c, rows if paged else None, dtype,
                )  # fmt: skip
            m[g] = top[0]

    return attend


def _paired(task, tasks):
    """The (query row, KV head) of parallel task `task` of `tasks`: early rows (few keys under
    a causal mask) paired with late ones, so a static split gives each thread the same work."""
    return T.if_then_else(task % 2 == 0, task // 2, tasks - 1 - task // 2)


def _visible(causal, k_len, q_len, row_in_seq):
    """Keys a query row sees: all, or under the causal mask those up to its position."""
    return T.if_then_else(causal > 0, T.min(k_len - q_len + row_in_seq + 1, k_len), k_len)


@T.macro
def _find_sequence(q_indptr, batch_size, row, seq):
    """seq[0] = the sequence whose query rows hold `row`."""
    seq[0] = 0
    for bb in range(batch_size):
        if q_indptr[bb] <= row:
            seq[0] = bb


@T.macro
def _start_rows(q, row, hk, group, d, sm_scale, qf, o, m, den):
    """A task's query heads scaled to base 2 into qf, and TVM's initial online-softmax state."""
    for g, dd in T.grid(group, d):
        qf[g, dd] = T.Cast(F32, q[row, hk * group + g, dd]) * (sm_scale * LOG2E)
        o[g, dd] = T.float32(0)
    for g in range(group):
        m[g] = T.float32(M_INIT)
        den[g] = T.float32(D_INIT)


@T.macro
def _finish_rows(output, lse, row, hk, group, d, o, m, den):
    """A task's outputs (normalized) and base-2 log-sum-exps."""
    for g in range(group):
        for dd in T.vectorized(d):
            output[row, hk * group + g, dd] = T.Cast(output.dtype, o[g, dd] / den[g])
        lse[row, hk * group + g] = m[g] + T.log2(den[g])


def ragged_prefill_kernel(h_kv: int, h_q: int, d: int, dtype: str) -> tirx.PrimFunc:
    """`batch_prefill_ragged_kv`: each sequence's new query rows against its new keys."""
    group = h_q // h_kv
    lanes = next(n for n in (16, 8, 4, 2, 1) if d % n == 0)

    ragged_block = _block_attention(group, d, lanes, dtype)
    scratch = _block_attention(group, d, lanes, F32)

    @T.prim_func(s_tir=True)
    def batch_prefill_ragged_kv(
        var_q: T.handle,
        var_q_indptr: T.handle,
        var_k: T.handle,
        var_v: T.handle,
        var_kv_indptr: T.handle,
        var_q_rope_position: T.handle,
        var_k_rope_pos_offset: T.handle,
        var_output: T.handle,
        var_lse: T.handle,
        causal: T.int32,
        rotary_mode: T.int32,
        rope_scale: T.float32,
        rope_theta: T.float32,
        sm_scale: T.float32,
    ):
        T.func_attr({"tirx.is_scheduled": True})
        batch_size = T.int32()
        qo_len = T.int32()
        kv_len = T.int32()
        q_indptr_elem_offset = T.int32()
        kv_indptr_elem_offset = T.int32()
        q_rope_position_elem_offset = T.int32()
        k_rope_pos_offset_elem_offset = T.int32()
        q = T.match_buffer(var_q, (qo_len, h_q, d), dtype)
        q_indptr = T.match_buffer(
            var_q_indptr, (batch_size + 1,), "int32", elem_offset=q_indptr_elem_offset
        )
        k = T.match_buffer(var_k, (kv_len, h_kv, d), dtype)
        v = T.match_buffer(var_v, (kv_len, h_kv, d), dtype)
        kv_indptr = T.match_buffer(
            var_kv_indptr, (batch_size + 1,), "int32", elem_offset=kv_indptr_elem_offset
        )
        q_rope_position = T.match_buffer(  # noqa: F841
            var_q_rope_position, (qo_len,), "int32", elem_offset=q_rope_position_elem_offset
        )
        k_rope_pos_offset = T.match_buffer(  # noqa: F841
            var_k_rope_pos_offset,
            (batch_size,),
            "int32",
            elem_offset=k_rope_pos_offset_elem_offset,
        )
        output = T.match_buffer(var_output, (qo_len, h_q, d), dtype)
        lse = T.match_buffer(var_lse, (qo_len, h_q), F32)
        assert rotary_mode == 0, "ferrumc's CPU attention expects rotary in the graph"

        for task in T.parallel(qo_len * h_kv):
            with T.sblock("prefill"):
                T.reads(q[0:qo_len, 0:h_q, 0:d], k[0:kv_len, 0:h_kv, 0:d], v[0:kv_len, 0:h_kv, 0:d])
                T.writes(output[0:qo_len, 0:h_q, 0:d], lse[0:qo_len, 0:h_q])
                paired: T.let[T.int32] = _paired(task, qo_len * h_kv)
                row: T.let[T.int32] = paired // h_kv
                hk: T.let[T.int32] = paired % h_kv
                seq = T.sblock_alloc_buffer((1,), "int32", scope="local")
                _find_sequence(q_indptr, batch_size, row, seq)
                b: T.let[T.int32] = seq[0]
                q_len: T.let[T.int32] = q_indptr[b + 1] - q_indptr[b]
                k_len: T.let[T.int32] = kv_indptr[b + 1] - kv_indptr[b]
                visible: T.let[T.int32] = _visible(causal, k_len, q_len, row - q_indptr[b])
                qf = T.sblock_alloc_buffer((group, d), F32)
                o = T.sblock_alloc_buffer((group, d), F32)
                s = T.sblock_alloc_buffer((group, BLOCK), F32)
                top = T.sblock_alloc_buffer((1,), F32)
                kt = T.sblock_alloc_buffer((BLOCK, 1, d), F32)
                vt = T.sblock_alloc_buffer((BLOCK, 1, d), F32)
                m = T.sblock_alloc_buffer((group,), F32)
                den = T.sblock_alloc_buffer((group,), F32)
                _start_rows(q, row, hk, group, d, sm_scale, qf, o, m, den)
                # Full blocks straight from k and v; a partial one through f32 scratch rows.
                for blk in range(visible // BLOCK):
                    first: T.let[T.int32] = kv_indptr[b] + blk * BLOCK
                    ragged_block(k, v, first, hk, qf, o, s, m, den, top, BLOCK, False)
                for blk in range(visible // BLOCK, (visible + BLOCK - 1) // BLOCK):
                    first: T.let[T.int32] = kv_indptr[b] + blk * BLOCK
                    count: T.let[T.int32] = T.min(BLOCK, visible - blk * BLOCK)
                    for r, dd in T.grid(BLOCK, d):
                        if r < count:
                            kt[r, 0, dd] = T.Cast(F32, k[first + r, hk, dd])
                            vt[r, 0, dd] = T.Cast(F32, v[first + r, hk, dd])
                        else:
                            kt[r, 0, dd] = T.float32(0)
                            vt[r, 0, dd] = T.float32(0)
                    scratch(kt, vt, 0, 0, qf, o, s, m, den, top, count, False)
                _finish_rows(output, lse, row, hk, group, d, o, m, den)

    return batch_prefill_ragged_kv


def paged_prefill_kernel(
    h_kv: int, h_q: int, d: int, dtype: str, page_size: int = BLOCK
) -> tirx.PrimFunc:
    """`batch_prefill_paged_kv_cpu` (no sliding window): each sequence's new query rows
    against the keys already in its pages (a prompt's later chunks, or a later turn). TVM's
    kernel runs serially, one scalar at a time, and walks the whole cache's capacity for
    every query row and head: a 1024-token prompt's second chunk of 512 took ~10 s on
    SmolLM2. Here, as the ragged kernel: parallel over (query row, KV head) paired early with
    late, a page of keys per online-softmax block."""
    assert page_size == BLOCK, page_size
    group = h_q // h_kv
    lanes = next(n for n in (16, 8, 4, 2, 1) if d % n == 0)
    page_block = _block_attention(group, d, lanes, dtype)

    @T.prim_func(s_tir=True)
    def batch_prefill_paged_kv_cpu(
        var_q: T.handle,
        var_q_indptr: T.handle,
        var_pages: T.handle,
        var_page_indptr: T.handle,
        var_page_values: T.handle,
        var_length_info: T.handle,
        var_k_rope_pos_offset: T.handle,
        var_q_rope_position: T.handle,
        var_output: T.handle,
        var_lse: T.handle,
        causal: T.int32,
        rotary_mode: T.int32,
        rope_scale: T.float32,
        rope_theta: T.float32,
        sm_scale: T.float32,
    ):
        T.func_attr({"tirx.is_scheduled": True})
        batch_size = T.int32()
        total_len = T.int32()
        nnz_pages = T.int32()
        max_num_pages = T.int32()
        q_indptr_elem_offset = T.int32()
        page_indptr_elem_offset = T.int32()
        page_values_elem_offset = T.int32()
        k_rope_pos_offset_elem_offset = T.int32()
        q_rope_position_elem_offset = T.int32()
        length_info_elem_offset = T.int32()
        q = T.match_buffer(var_q, (total_len, h_q, d), dtype)
        q_indptr = T.match_buffer(
            var_q_indptr, (batch_size + 1,), "int32", elem_offset=q_indptr_elem_offset
        )
        pages = T.match_buffer(var_pages, (max_num_pages, 2, h_kv, page_size, d), dtype)
        page_indptr = T.match_buffer(
            var_page_indptr, (batch_size + 1,), "int32", elem_offset=page_indptr_elem_offset
        )
        page_values = T.match_buffer(
            var_page_values, (nnz_pages,), "int32", elem_offset=page_values_elem_offset
        )
        last_len = T.match_buffer(
            var_length_info, (batch_size,), "int32", elem_offset=length_info_elem_offset
        )
        k_rope_pos_offset = T.match_buffer(  # noqa: F841
            var_k_rope_pos_offset,
            (batch_size,),
            "int32",
            elem_offset=k_rope_pos_offset_elem_offset,
        )
        q_rope_position = T.match_buffer(  # noqa: F841
            var_q_rope_position, (total_len,), "int32", elem_offset=q_rope_position_elem_offset
        )
        output = T.match_buffer(var_output, (total_len, h_q, d), dtype)
        lse = T.match_buffer(var_lse, (total_len, h_q), F32)
        assert rotary_mode == 0, "ferrumc's CPU attention expects rotary in the graph"

        for task in T.parallel(total_len * h_kv):
            with T.sblock("prefill_paged"):
                T.reads(
                    q[0:total_len, 0:h_q, 0:d],
                    pages[0:max_num_pages, 0:2, 0:h_kv, 0:page_size, 0:d],
                )
                T.writes(output[0:total_len, 0:h_q, 0:d], lse[0:total_len, 0:h_q])
                paired: T.let[T.int32] = _paired(task, total_len * h_kv)
                row: T.let[T.int32] = paired // h_kv
                hk: T.let[T.int32] = paired % h_kv
                seq = T.sblock_alloc_buffer((1,), "int32", scope="local")
                _find_sequence(q_indptr, batch_size, row, seq)
                b: T.let[T.int32] = seq[0]
                q_len: T.let[T.int32] = q_indptr[b + 1] - q_indptr[b]
                n_pages: T.let[T.int32] = page_indptr[b + 1] - page_indptr[b]
                k_len: T.let[T.int32] = T.if_then_else(
                    n_pages > 0, (n_pages - 1) * page_size + last_len[b], 0
                )
                visible: T.let[T.int32] = _visible(causal, k_len, q_len, row - q_indptr[b])
                qf = T.sblock_alloc_buffer((group, d), F32)
                o = T.sblock_alloc_buffer((group, d), F32)
                s = T.sblock_alloc_buffer((group, BLOCK), F32)
                top = T.sblock_alloc_buffer((1,), F32)
                m = T.sblock_alloc_buffer((group,), F32)
                den = T.sblock_alloc_buffer((group,), F32)
                _start_rows(q, row, hk, group, d, sm_scale, qf, o, m, den)
                for p in range((visible + page_size - 1) // page_size):
                    page: T.let[T.int32] = page_values[page_indptr[b] + p]
                    rows: T.let[T.int32] = T.min(page_size, visible - p * page_size)
                    page_block(pages, pages, page, hk, qf, o, s, m, den, top, rows, True)
                _finish_rows(output, lse, row, hk, group, d, o, m, den)

    return batch_prefill_paged_kv_cpu


def _buffer_shape(func: tirx.PrimFunc, index: int) -> tuple[list[object], str]:
    ty = func.params[index].ty
    return list(ty.shape), str(ty.dtype)


def _static(dims: list[object]) -> list[int] | None:
    if all(isinstance(x, tirx.IntImm) for x in dims):
        return [int(x) for x in dims]
    return None


def replacement(name: str, func: tirx.PrimFunc) -> tirx.PrimFunc | None:
    """Our kernel for TVM's kernel `name` (shapes read from its parameters), or None."""
    if name == "fused_rope" and len(func.params) == 6:
        (h_fused, d), dtype = _buffer_shape(func, 0)[0][1:], _buffer_shape(func, 0)[1]
        (h_q, _), (h_kv, _) = _buffer_shape(func, 2)[0][1:], _buffer_shape(func, 3)[0][1:]
        dims = _static([h_fused, d, h_q, h_kv])
        if dims is None or dims[0] != dims[2] + 2 * dims[3]:
            return None
        return split_qkv_kernel(dims[2], dims[3], dims[1], dtype)
    if name == "tir_kv_cache_transpose_append" and len(func.params) == 4:
        pages, dtype = _buffer_shape(func, 0)
        dims = _static(pages[1:])
        if dims is None or dims[0] != 2:
            return None
        _, h_kv, page_size, d = dims
        return append_kernel(h_kv, d, dtype, page_size)
    if name == "batch_decode_paged_kv_cpu" and len(func.params) == 13:
        q_shape, dtype = _buffer_shape(func, 0)
        pages = _static(_buffer_shape(func, 1)[0][2:])
        h_q, d = _static(q_shape[1:]) or (None, None)
        if pages is None or h_q is None:
            return None
        h_kv, page_size, _ = pages
        return decode_kernel(h_kv, h_q, d, dtype, page_size)
    if name == "batch_prefill_paged_kv_cpu" and len(func.params) == 15:
        q_shape, dtype = _buffer_shape(func, 0)
        pages = _static(_buffer_shape(func, 2)[0][2:])
        h_q, d = _static(q_shape[1:]) or (None, None)
        if pages is None or h_q is None or pages[1] != BLOCK:
            return None
        return paged_prefill_kernel(pages[0], h_q, d, dtype, pages[1])
    if name == "batch_prefill_ragged_kv" and len(func.params) == 14:
        q_shape, dtype = _buffer_shape(func, 0)
        k_shape, _ = _buffer_shape(func, 2)
        dims = _static([*q_shape[1:], *k_shape[1:]])
        if dims is None or dims[1] != dims[3]:  # d_qk == d_v only
            return None
        h_q, d, h_kv, _ = dims
        return ragged_prefill_kernel(h_kv, h_q, d, dtype)
    return None


@tvm.transform.module_pass(opt_level=0, name="ReplaceCPUAttention")
class ReplaceCPUAttention:
    """Swap TVM's CPU attention kernels in a module for the ones above (llvm only)."""

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        for gv, func in list(mod.functions_items()):
            if not isinstance(func, tirx.PrimFunc):
                continue
            new = replacement(gv.name_hint, func)
            if new is not None:
                mod[gv] = new.with_attr("global_symbol", gv.name_hint)
        return mod
