"""Paged decode attention for CPU (`batch_decode_paged_kv_cpu`): one query row per sequence.

A decode step of one sequence has only 2-3 KV heads to share among the threads, and at a
context of a few hundred tokens the whole call is a few microseconds of arithmetic, less than
waking TVM's thread pool (~3-10 us on 2 shared cores). So:
- each (sequence, KV head)'s pages are cut into `n_split` runs (DECODE_TASKS / Hkv), each
  task keeping its own running max, sum and output (online softmax over pages of 16 keys,
  head dim in vector lanes); the runs are merged by log-sum-exp at the end, where TVM's
  initial state (max -5e4, sum 1) is added back so that results equal TVM's kernel's;
- below SERIAL_WORK (key, query head) pairs the tasks run on the calling thread;
- nothing is allocated per task or per key (TVM allocates each sblock-local buffer from its
  workspace pool per loop iteration): the scratch is allocated once per call;
- a page's 16 scores come out of one transposing shuffle-add tree, its 16 weights out of one
  vector exp2 (a polynomial: libm's exp2f was called once per key), and its weighted value
  rows are summed in registers, one store per page instead of one per key.
The old kernel (parallel over (sequence, KV head), a horizontal sum and an exp2f call per key,
two workspace allocations per key) took 27-41 us at 130 keys with SmolLM2's heads; this one
~16 us serially on the same loaded 2 cores (test_attention_decode_cpu.py checks it against
numpy). Rotary inside the cache is not supported (rotary_mode must be 0): ferrumc applies it
in the graph.
"""

from __future__ import annotations

from collections.abc import Callable

import tvm
from tvm import tirx
from tvm.script import tirx as T

from .tir_math import LOG2E, exp2, prefetch

F32 = "float32"
# TVM's kernels start the running max at -5e4 and the running sum at 1: kept for equal results.
M_INIT, D_INIT = -5e4, 1.0
# The score of a row past a page's last token: its weight 2^(MASKED - max) is exactly 0.
MASKED = -3.0e38
# Tasks one sequence's decode is cut into (runs per (sequence, KV head): DECODE_TASKS / Hkv).
DECODE_TASKS = 16
# (key, query head) pairs below which a call runs serially. Timed alone, with its pages in L2,
# the serial path wins up to ~500 keys of SmolLM2's 9 heads; in a decode step the layer's
# pages come cold from memory and two threads fetch them faster: parallel from 4 pages was
# 7-9% faster a SmolLM2 step than from 4096 pairs (~28 pages), 1-2% for Qwen2.5-0.5B
# (tools/ab_decode.py).
SERIAL_WORK = 512


def decode_kernel(h_kv: int, h_q: int, d: int, dtype: str, page_size: int = 16) -> tirx.PrimFunc:
    """TVM's `batch_decode_paged_kv_cpu` signature and results (output, base-2 lse)."""
    group = h_q // h_kv
    lanes = next(n for n in (16, 8, 4, 2, 1) if d % n == 0)

    # Runs per (sequence, KV head): a constant, since dividing by a symbolic count makes
    # TVM's arithmetic analysis take minutes to build the kernel.
    n_split = max(1, -(-DECODE_TASKS // h_kv))

    LINE = 64 * 8 // tvm.DataType(dtype).bits  # elements per cache line

    def block_scores(qs, b, h, pages, page, hk, rows):
        return key_block_scores(
            lambda ramp: qs[b, h, ramp], lambda r, ramp: pages[page, 0, hk, r, ramp],
            d, lanes, page_size, rows, dtype,
        )  # fmt: skip

    def weighted_values(weights, t, pages, page, hk, c, rows, partial):
        return value_block_sum(
            lambda r: weights[t, r], lambda r, ramp: pages[page, 1, hk, r, ramp],
            d, lanes, page_size, c, rows if partial else None, dtype,
        )  # fmt: skip

    @T.macro
    def update_values(t, g, pages, page, hk, rows, scale, acc_o, score, partial):
        for c in T.unroll(d // lanes):
            acc_o[t, g, T.Ramp(c * lanes, 1, lanes)] = acc_o[
                t, g, T.Ramp(c * lanes, 1, lanes)
            ] * T.Broadcast(scale, lanes) + weighted_values(
                score, t, pages, page, hk, c, rows, partial
            )

    @T.macro
    def run(t, pages, indptr, values, last_len, qs, acc_o, acc_m, acc_den, score, top):
        b: T.let[T.int32] = t // (h_kv * n_split)
        hk: T.let[T.int32] = t // n_split % h_kv
        page_begin: T.let[T.int32] = indptr[b]
        n_pages: T.let[T.int32] = indptr[b + 1] - page_begin
        per: T.let[T.int32] = (n_pages + n_split - 1) // n_split
        p_lo: T.let[T.int32] = T.min(t % n_split * per, n_pages)
        p_hi: T.let[T.int32] = T.min(p_lo + per, n_pages)
        # The run's pages come cold from memory: ask for all their lines first, so that the
        # fetches overlap instead of each 4 KB block starting its own stream. SmolLM2 int4
        # decode step (tools/ab_decode.py): 0.96-0.97 at 480-544 tokens of context, 0.97-1.0
        # at 128-192; Qwen2.5-0.5B's (2 KV heads) 1.0 at both.
        for p in range(p_hi - p_lo):
            page_id: T.let[T.int32] = values[page_begin + p_lo + p]
            for line in range(page_size * d // LINE):
                # (The K or V block is contiguous: its lines, indexed past the last dim.)
                T.evaluate(prefetch(T.address_of(pages[page_id, 0, hk, 0, line * LINE])))
                T.evaluate(prefetch(T.address_of(pages[page_id, 1, hk, 0, line * LINE])))
        for g in range(group):
            for dd in T.vectorized(d):
                acc_o[t, g, dd] = T.float32(0)
            acc_m[t, g] = T.float32(M_INIT)
            acc_den[t, g] = T.float32(0)
        for p in range(p_hi - p_lo):
            page: T.let[T.int32] = values[page_begin + p_lo + p]
            rows: T.let[T.int32] = T.if_then_else(p_lo + p == n_pages - 1, last_len[b], page_size)
            for g in range(group):
                # scores (q pre-scaled to base 2), the new running max, then the block's
                # weights in place of its scores
                score[t, T.Ramp(0, 1, page_size)] = block_scores(
                    qs, b, hk * group + g, pages, page, hk, rows
                )
                top[t] = T.max(
                    acc_m[t, g], _lane_sum(score[t, T.Ramp(0, 1, page_size)], page_size, T.Max)
                )
                scale: T.let[T.float32] = exp2(acc_m[t, g] - top[t])
                score[t, T.Ramp(0, 1, page_size)] = exp2(
                    score[t, T.Ramp(0, 1, page_size)] - T.Broadcast(top[t], page_size), page_size
                )
                acc_den[t, g] = acc_den[t, g] * scale + _lane_sum(
                    score[t, T.Ramp(0, 1, page_size)], page_size, T.Add
                )
                if rows == page_size:
                    update_values(t, g, pages, page, hk, rows, scale, acc_o, score, False)
                else:
                    update_values(t, g, pages, page, hk, rows, scale, acc_o, score, True)
                acc_m[t, g] = top[t]

    @T.prim_func(s_tir=True)
    def batch_decode_paged_kv(
        Q_handle: T.handle,
        pages_handle: T.handle,
        page_table_indptr_handle: T.handle,
        page_table_values_handle: T.handle,
        var_length_info: T.handle,
        k_rope_pos_offset_handle: T.handle,
        q_rope_position_handle: T.handle,
        output_handle: T.handle,
        lse_handle: T.handle,
        rotary_mode: T.int32,
        rope_scale: T.float32,
        rope_theta: T.float32,
        sm_scale: T.float32,
    ):
        T.func_attr({"tirx.is_scheduled": True, "global_symbol": "batch_decode_paged_kv_cpu"})
        B = T.int32()
        nnz_pages = T.int32()
        max_num_pages = T.int32()
        page_indptr_elem_offset = T.int32()
        page_values_elem_offset = T.int32()
        k_rope_pos_offset_elem_offset = T.int32()
        q_rope_position_elem_offset = T.int32()
        length_info_elem_offset = T.int32()
        Q = T.match_buffer(Q_handle, (B, h_q, d), dtype)
        pages = T.match_buffer(pages_handle, (max_num_pages, 2, h_kv, page_size, d), dtype)
        indptr = T.match_buffer(
            page_table_indptr_handle, (B + 1,), "int32", elem_offset=page_indptr_elem_offset
        )
        values = T.match_buffer(
            page_table_values_handle, (nnz_pages,), "int32", elem_offset=page_values_elem_offset
        )
        k_rope_pos_offset = T.match_buffer(  # noqa: F841 (part of the signature)
            k_rope_pos_offset_handle, (B,), "int32", elem_offset=k_rope_pos_offset_elem_offset
        )
        q_rope_position = T.match_buffer(  # noqa: F841
            q_rope_position_handle, (B,), "int32", elem_offset=q_rope_position_elem_offset
        )
        output = T.match_buffer(output_handle, (B, h_q, d), dtype)
        lse = T.match_buffer(lse_handle, (B, h_q), F32)
        last_len = T.match_buffer(
            var_length_info, (B,), "int32", elem_offset=length_info_elem_offset
        )
        assert rotary_mode == 0, "ferrumc's CPU attention expects rotary in the graph"

        with T.sblock("decode"):
            T.reads(Q[0:B, 0:h_q, 0:d], pages[0:max_num_pages, 0:2, 0:h_kv, 0:page_size, 0:d])
            T.writes(output[0:B, 0:h_q, 0:d], lse[0:B, 0:h_q])
            # Scratch, once per call: the scaled queries, then per task its running output,
            # max and sum, its block's scores (then weights) and new max.
            qs = T.sblock_alloc_buffer((B, h_q, d), F32)
            acc_o = T.sblock_alloc_buffer((B * h_kv * n_split, group, d), F32)
            acc_m = T.sblock_alloc_buffer((B * h_kv * n_split, group), F32)
            acc_den = T.sblock_alloc_buffer((B * h_kv * n_split, group), F32)
            score = T.sblock_alloc_buffer((B * h_kv * n_split, page_size), F32)
            top = T.sblock_alloc_buffer((B * h_kv * n_split,), F32)
            merged = T.sblock_alloc_buffer((2,), F32)
            for b, h in T.grid(B, h_q):
                for dd in T.vectorized(d):
                    qs[b, h, dd] = T.Cast(F32, Q[b, h, dd]) * (sm_scale * LOG2E)
            if nnz_pages * page_size * h_q < SERIAL_WORK:
                for t in range(B * h_kv * n_split):
                    run(t, pages, indptr, values, last_len, qs, acc_o, acc_m,
                        acc_den, score, top)  # fmt: skip
            else:
                for t in T.parallel(B * h_kv * n_split):
                    run(t, pages, indptr, values, last_len, qs, acc_o, acc_m,
                        acc_den, score, top)  # fmt: skip
            # Merge a (sequence, KV head)'s runs into run 0, with TVM's initial state.
            for b, hk, g in T.grid(B, h_kv, group):
                t0: T.let[T.int32] = (b * h_kv + hk) * n_split
                merged[0] = T.float32(M_INIT)
                for sp in range(n_split):
                    merged[0] = T.max(merged[0], acc_m[t0 + sp, g])
                merged[1] = T.float32(D_INIT) * exp2(T.float32(M_INIT) - merged[0])
                for sp in range(n_split):
                    weight: T.let[T.float32] = exp2(acc_m[t0 + sp, g] - merged[0])
                    merged[1] = merged[1] + acc_den[t0 + sp, g] * weight
                    if sp == 0:
                        for dd in T.vectorized(d):
                            acc_o[t0, g, dd] = acc_o[t0, g, dd] * weight
                    else:
                        for dd in T.vectorized(d):
                            acc_o[t0, g, dd] = acc_o[t0, g, dd] + acc_o[t0 + sp, g, dd] * weight
                for dd in T.vectorized(d):
                    output[b, hk * group + g, dd] = T.Cast(dtype, acc_o[t0, g, dd] / merged[1])
                lse[b, hk * group + g] = merged[0] + T.log2(merged[1])

    return batch_decode_paged_kv


def key_block_scores(
    q_at: Callable,
    key_at: Callable,
    d: int,
    lanes: int,
    block: int,
    rows: tirx.PrimExpr,
    dtype: str,
) -> tirx.PrimExpr:
    """A block of `block` keys' scores as one float32 vector: q . key_r for r < rows, MASKED
    past them (their memory may hold garbage). q_at(ramp) is q's f32 lanes (pre-scaled to
    base 2), key_at(r, ramp) key r's, in `dtype`. With a vector per key as wide as the block,
    a transposing shuffle-add tree (~3 operations per key) replaces a horizontal sum per key
    (~9)."""

    def dot(r):
        acc = q_at(T.Ramp(0, 1, lanes)) * widen(key_at(r, T.Ramp(0, 1, lanes)), lanes, dtype)
        for c in range(1, d // lanes):
            ramp = T.Ramp(c * lanes, 1, lanes)
            acc = acc + q_at(ramp) * widen(key_at(r, ramp), lanes, dtype)
        return acc

    if lanes == block:
        sums = _transpose_sum([dot(r) for r in range(block)])
    else:
        sums = T.Shuffle([_lane_sum(dot(r), lanes) for r in range(block)], list(range(block)))
    keys = T.Ramp(0, 1, block)
    return T.Select(keys < T.Broadcast(rows, block), sums, T.Broadcast(T.float32(MASKED), block))


def widen(x: tirx.PrimExpr, lanes: int, dtype: str) -> tirx.PrimExpr:
    """A vector x of `dtype` (f16, bf16 or f32) lanes as f32; bf16 by its bits (an f32's high
    16). TVM 0.27 turns a bf16 vector's cast into a numeric conversion of its uint16 storage
    (a key of 1.0 became 16256.0), though scalar casts in vectorized loops come out right."""
    vec = f"float32x{lanes}"
    if dtype == "bfloat16":
        bits = T.Cast(f"uint32x{lanes}", T.reinterpret(f"uint16x{lanes}", x))
        return T.reinterpret(vec, T.shift_left(bits, T.Broadcast(T.uint32(16), lanes)))
    return T.Cast(vec, x)


def value_block_sum(
    weight_at: Callable,
    value_at: Callable,
    d: int,
    lanes: int,
    block: int,
    c: int,
    rows: tirx.PrimExpr | None,
    dtype: str,
) -> tirx.PrimExpr:
    """sum_r weight_at(r) * value r, for head-dim chunk c, as one expression so that the sum
    stays in registers. With `rows` (a partial block) the rows past it are selected away:
    weight 0 times garbage may be NaN."""
    ramp = T.Ramp(c * lanes, 1, lanes)
    terms = []
    for r in range(block):
        row = widen(value_at(r, ramp), lanes, dtype)
        if rows is not None:
            row = T.Select(T.Broadcast(r < rows, lanes), row, T.Broadcast(T.float32(0), lanes))
        terms.append(T.Broadcast(weight_at(r), lanes) * row)
    return _pairwise_sum(terms)


def _lane_sum(vec: tirx.PrimExpr, lanes: int, combine: type = tirx.Add) -> tirx.PrimExpr:
    """A vector's lanes combined (summed, or with tirx.Max their max) by halving, each half a
    register operation (a serial chain of scalar adds, or halving through memory, costs as
    much as the dot product itself)."""
    while lanes > 1:
        lanes //= 2
        half = tirx.Var("half", f"float32x{lanes * 2}")
        low = T.vectorlow(f"float32x{lanes}", half) if lanes > 1 else T.Shuffle([half], [0])
        high = T.vectorhigh(f"float32x{lanes}", half) if lanes > 1 else T.Shuffle([half], [1])
        vec = tirx.Let(half, vec, combine(low, high))
    return vec


def _pairwise_sum(terms: list[tirx.PrimExpr]) -> tirx.PrimExpr:
    """The sum of `terms` as a balanced tree: a page's 16 weighted value rows added in a
    chain were a 16-deep dependency of 4-cycle adds per head-dim chunk."""
    while len(terms) > 1:
        pairs = [a + b for a, b in zip(terms[::2], terms[1::2], strict=False)]
        terms = pairs + terms[len(terms) // 2 * 2 :]
    return terms[0]


def _transpose_sum(vectors: list[tirx.PrimExpr]) -> tirx.PrimExpr:
    """[sum of vectors[i]'s lanes for each i], for n vectors of n lanes (n a power of two).

    Pairs are combined level by level: the low halves of each block of both vectors side by
    side, plus the high halves, leaves half as many vectors each holding the partial sums of
    two; after log2(n) levels lane i holds vectors[i]'s sum. n - 1 adds and 2 (n - 1)
    shuffles in all; each value is used twice, hence the Let bindings."""
    n = len(vectors)
    bindings: list[tuple[tirx.Var, tirx.PrimExpr]] = []
    level, half = list(vectors), n // 2
    while len(level) > 1:
        low = [i for block in range(0, 2 * n, 2 * half) for i in range(block, block + half)]
        high = [i + half for i in low]
        nxt = []
        for k in range(0, len(level), 2):
            a, b = tirx.Var("a", f"float32x{n}"), tirx.Var("b", f"float32x{n}")
            bindings += [(a, level[k]), (b, level[k + 1])]
            nxt.append(T.Shuffle([a, b], low) + T.Shuffle([a, b], high))
        level, half = nxt, half // 2
    body = level[0]
    for var, value in reversed(bindings):
        body = tirx.Let(var, value, body)
    return body
