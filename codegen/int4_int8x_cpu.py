"""Int4 decode with int8 activations on AVX-512 VNNI: int4_cpu.py's paths for M <= 8 rows of x.

x is quantized to int8 per block of 32 inputs (scale dx = amax / 127, as llama.cpp's Q8
blocks), then each 64 packed bytes of a weight row (128 inputs) take two `vpdpbusd`: the low
and high nibbles as the unsigned operand, x as the signed one; a last 64 inputs (K % 128 = 64,
e.g. SmolLM2's K = 576) take two ymm ones. Per 64 bytes that is ~7 vector uops against ~28 for
the float lookup GEMV; the result differs from exact f32 math by ~5e-3 relative (x's
rounding), the trade llama.cpp makes for Q4_0.

    y[j] = sum_b cs[j, b] * (sum_{i in b} q[j, i] * xq[i])  -  sum_b cs[j, b] * z[j, b] * xs[b]

with cs[j, b] = s[j, group of b] * dx[b] per row and block, z the zero point and xs[b] the sum
of block b's int8 codes. Symmetric (z = 8), the second term enters each vpdpbusd lane's start;
with zero points, it is summed per row over groups. `int8x_reference` is the same math in
numpy, for tests. Needs K % 64 == 0 and a group size that is a multiple of 32; rows are spread
over tasks as in the float GEMV, and each packed vector serves every row of x.

Each of a task's row streams asks for its line tir_math.PREFETCH_BYTES ahead as it goes, and
for its scales' (and zero points') PREFETCH_SCALE_BYTES ahead once per row: decode GEMVs
10-17% faster on 1 and 2 threads with weights from DRAM, at every shape timed
(codegen/NOTES.md).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
from tvm.script import tirx as T

from .linear_cpu import _largest_divisor
from .tir_math import PREFETCH_BYTES, elements_in, prefetch

if TYPE_CHECKING:  # int4_cpu imports this module
    from .int4_cpu import Int4Spec

F32 = "float32"
BLOCK = 32  # inputs per int8 block of x
DPBUSD = "llvm.x86.avx512.vpdpbusd.512"
DPBUSD_YMM = "llvm.x86.avx512.vpdpbusd.256"
# How far ahead a row stream prefetches its scales and zero points, once per row (its packed
# bytes go tir_math.PREFETCH_BYTES ahead, per chunk of 64; a row of SmolLM2's holds 288 + 36
# bytes). Timed at 128 and 256: within a few percent of each other.
PREFETCH_SCALE_BYTES = 128


def supports(spec: Int4Spec) -> bool:
    """Whether the int8-activation GEMV covers `spec` (given AVX-512 VNNI)."""
    return spec.k % 64 == 0 and spec.group_size % BLOCK == 0


def tasks_per_iteration(tasks: int) -> int:
    """Consecutive tasks per parallel iteration, keeping >= 16 iterations: in the float GEMVs
    (int4_cpu.py) each iteration allocates its local buffers from TVM's workspace, which costs
    as much as a small task; the int8 GEMV needs no workspace and splits its rows the same way."""
    return _largest_divisor(tasks, tuple(d for d in (16, 8, 4, 2, 1) if tasks >= 16 * d or d == 1))


def int8x_gemv(
    spec: Int4Spec,
    rows: int,
    x_rows: int,
    x_at: Callable,
    scale: Callable,
    zero: Callable,
    epilogue: Callable,
    lane_sum: Callable,
    glu: Callable | None = None,
) -> Callable:
    """The T.macro gemv_int8x(X, Q, S, Z, B, P, Y, m) for int4_cpu.int4_kernel's spec: m <= x_rows
    rows of x (rows past m repeat the last and are not stored) against `rows` weight rows per
    task, each packed vector unpacked once for all x rows.

    With `glu` (swiglu: rows even), a task's rows r and r + rows/2 are weight rows j and
    j + N/2 (the stride is N / rows): their sums wait in a buffer until the task's rows are
    done, then y[j] = glu(sum j, sum j + N/2, B, j) for its consecutive j, vectorized."""
    n, k, g = spec.n, spec.k, spec.group_size
    stride = n // rows
    per_task = tasks_per_iteration(stride)
    paired = glu is not None
    assert not paired or rows % 2 == 0, rows
    blocks, groups = k // BLOCK, k // g
    symmetric = spec.zero_dtype is None
    scale_ahead = elements_in(PREFETCH_SCALE_BYTES, spec.scale_dtype)
    zero_ahead = 0 if symmetric else elements_in(PREFETCH_SCALE_BYTES, spec.zero_dtype)
    full, piece = k // 128, k % 128 // 64  # chunks of 128 inputs, then 0 or 1 of 64
    # A row of K % 128 == 64 inputs is 64 m + 32 bytes: odd rows start 32 bytes into a cache
    # line, and their 64-byte loads would each straddle two lines (~25% slower streaming). Odd
    # rows take their piece of 64 inputs first, so that their chunks start on a line. Rows
    # alternate with ji when the stride and the rows per task are even (the Q buffer is
    # 64-byte aligned); otherwise every row takes the piece last.
    head_first = bool(piece) and stride % 2 == 0 and per_task % 2 == 0

    def segment_of_block(head, b):
        """(first input, width in packed bytes) of the segment holding block b of x: chunks of
        128 inputs (64 bytes) and a piece of 64 (32 bytes), the piece last or, head, first."""
        if head:
            return T.if_then_else(b < 2, 0, (b - 2) // 4 * 128 + 64), T.if_then_else(b < 2, 32, 64)
        return b // 4 * 128, T.if_then_else(b < full * 4, 64, 32)

    def xq_index(head, b, h, i):
        """Where input 32 b + 2 i + h of x goes in the row layout: in each segment of 2w
        inputs, the w even ones (they meet the low nibbles) first, then the w odd ones."""
        start, width = segment_of_block(head, b)
        return start + h * width + (b * BLOCK - start) // 2 + i

    def dot(Q, row, xq, xinit, i, start, width):
        """int32 lanes of the segment at input `start`: over each lane's 8 nibbles, q times
        xq, plus xinit. Lane l of a segment sums its inputs 8l .. 8l + 7 (one block of x, one
        weight group); over the row that is lane start / 8 + l."""
        vi8, vi32, op = (
            ("int8x64", "int32x16", DPBUSD) if width == 64 else ("int8x32", "int32x8", DPBUSD_YMM)
        )
        lanes = width // 4
        packed = Q[row, T.Ramp(start // 2, 1, width)]
        low = T.reinterpret(vi8, T.bitwise_and(packed, T.Broadcast(T.uint8(15), width)))
        high = T.reinterpret(vi8, T.shift_right(packed, T.Broadcast(T.uint8(4), width)))
        ramp = T.Ramp(start // 8, 1, lanes)
        first = xinit[i, ramp] if symmetric else T.Broadcast(T.int32(0), lanes)
        lows = T.call_llvm_pure_intrin(vi32, op, first, low, xq[i, T.Ramp(start, 1, width)])
        return T.call_llvm_pure_intrin(vi32, op, lows, high, xq[i, T.Ramp(start + width, 1, width)])

    def lane_scales(S, row, dx, i, base, c, lanes):
        """The scale of each of `lanes` lanes of the segment at input base + 128 c: its weight
        group's times its block's, each spread from a short load by a shuffle. (The scales are
        read where they are stored: a zmm load of a row's scales widened into a buffer by the
        row's own narrower stores just before stalls store forwarding, 7x slower.)"""
        # The segment starts at input base + 128 c (g divides 128): which lane meets which
        # group depends on the constant base only.
        first, start = base // g + c * (128 // g), base + c * 128
        width = (base + lanes * 8 - 1) // g - base // g + 1  # groups met by the segment
        if width > 1:
            # TVM's Shuffle yields at most as many lanes as it is given: repeat the source.
            groups_ = T.Cast(f"float32x{width}", S[row, T.Ramp(first, 1, width)])
            index = [(base + 8 * ln) // g - base // g for ln in range(lanes)]
            groups_ = T.Shuffle([groups_] * (lanes // width), index)
        else:
            groups_ = T.Broadcast(scale(S, row, first), lanes)
        blocks_ = dx[i, T.Ramp(start // BLOCK, 1, lanes // 4)]
        return groups_ * T.Shuffle([blocks_] * 4, [ln // 4 for ln in range(lanes)])

    @T.macro
    def quantize_x(X, P, xq, xq_head, dx, xinit, xg, m16, r32, i_):
        for b in range(blocks):
            for i in T.vectorized(16):
                m16[i] = T.max(
                    T.fabs(x_at(X, P, i_, b * BLOCK + i)),
                    T.fabs(x_at(X, P, i_, b * BLOCK + 16 + i)),
                )
            fold16(m16, True)
            dx[i_, b] = m16[0] / T.float32(127)
            m16[1] = T.if_then_else(m16[0] > T.float32(0), T.float32(127) / m16[0], T.float32(0))
            for h in range(2):
                for i in T.vectorized(16):
                    r32[h * 16 + i] = T.round(x_at(X, P, i_, b * BLOCK + 2 * i + h) * m16[1])
                    xq[i_, xq_index(False, b, h, i)] = T.Cast("int8", r32[h * 16 + i])
                    if bool(head_first):
                        xq_head[i_, xq_index(True, b, h, i)] = T.Cast("int8", r32[h * 16 + i])
            if bool(symmetric):
                # The zero point 8 enters as each lane's start: -8 times the sum of its codes.
                # (Computed here: in a loop of its own after this one, xinit ended up sharing
                # dx's memory and every output was wrong; codegen/NOTES.md.)
                for t in range(4):
                    xinit[i_, b * 4 + t] = T.int32(-8) * T.Cast(
                        "int32",
                        r32[4 * t]
                        + r32[4 * t + 1]
                        + r32[4 * t + 2]
                        + r32[4 * t + 3]
                        + r32[16 + 4 * t]
                        + r32[16 + 4 * t + 1]
                        + r32[16 + 4 * t + 2]
                        + r32[16 + 4 * t + 3],
                    )
            else:
                # xg: per weight group, the sum of its x as quantized, for the zero points.
                for i in T.vectorized(16):
                    r32[i] = r32[i] + r32[i + 16]
                fold16(r32, False)
                if b % (g // BLOCK) == 0:
                    xg[i_, b // (g // BLOCK)] = T.float32(0)
                xg[i_, b // (g // BLOCK)] = xg[i_, b // (g // BLOCK)] + dx[i_, b] * r32[0]

    @T.macro
    def add_segment(acc, Q, S, xq, xinit, dx, row, r, i, m, base, c, width):
        # A chunk of 128 inputs (64 bytes, 16 lanes) or the piece of 64 (32 bytes, 8 lanes).
        acc[i, r, T.Ramp(0, 1, width // 4)] = acc[i, r, T.Ramp(0, 1, width // 4)] + T.Cast(
            f"float32x{width // 4}", dot(Q, row, xq, xinit, T.min(i, m - 1), base + c * 128, width)
        ) * lane_scales(S, row, dx, T.min(i, m - 1), base, c, width // 4)

    def ahead_of(head, c):
        """The packed byte PREFETCH_BYTES past the start of a row's chunk c."""
        return (64 * head + c * 128) // 2 + PREFETCH_BYTES

    def row_of(r, jb, ji):
        return r * stride + jb * per_task + ji

    @T.macro
    def rows_dot(Q, S, Z, B, Y, m, xq, xinit, dx, xg, acc, sums, jb, ji, head):
        """y for the task's rows at ji (each `rows` apart by the stride), the piece first if
        head."""
        for r in T.unroll(rows):
            for i in T.unroll(x_rows):
                for lane in T.vectorized(16):
                    acc[i, r, lane] = T.float32(0)
            T.evaluate(prefetch(T.address_of(S[row_of(r, jb, ji), scale_ahead])))
            if bool(not symmetric):
                T.evaluate(prefetch(T.address_of(Z[row_of(r, jb, ji), zero_ahead])))
        if bool(head):
            for r in T.unroll(rows):
                for i in T.unroll(x_rows):
                    add_segment(acc, Q, S, xq, xinit, dx, row_of(r, jb, ji), r, i, m, 0, 0, 32)
        for c in range(full):
            for r in T.unroll(rows):
                T.evaluate(prefetch(T.address_of(Q[row_of(r, jb, ji), ahead_of(head, c)])))
                for i in T.unroll(x_rows):
                    add_segment(
                        acc, Q, S, xq, xinit, dx, row_of(r, jb, ji), r, i, m, 64 * head, c, 64
                    )
        if bool(piece and not head):
            for r in T.unroll(rows):
                for i in T.unroll(x_rows):
                    add_segment(
                        acc, Q, S, xq, xinit, dx, row_of(r, jb, ji), r, i, m, full * 128, 0, 32
                    )
        for r in T.unroll(rows):
            for i in T.unroll(x_rows):
                if i < m:
                    lane_sum(acc, i, r)
                    if bool(not symmetric):
                        # Asymmetric: minus the sum over groups of s * z * xg.
                        for gi in range(groups):
                            acc[i, r, 0] = (
                                acc[i, r, 0]
                                - scale(S, row_of(r, jb, ji), gi)
                                * zero(Z, row_of(r, jb, ji), gi)
                                * xg[i, gi]
                            )
                    if paired:
                        sums[i, r, ji] = acc[i, r, 0]
                    else:
                        Y[i, row_of(r, jb, ji)] = epilogue(acc[i, r, 0], B, row_of(r, jb, ji))

    @T.macro
    def gemv_int8x(X, Q, S, Z, B, P, Y, m):
        with T.sblock("int4_gemv_int8x"):
            xq = T.sblock_alloc_buffer((x_rows, k), "int8")
            xq_head = T.sblock_alloc_buffer((x_rows, k if head_first else 1), "int8")
            dx = T.sblock_alloc_buffer((x_rows, blocks), F32)
            xinit = T.sblock_alloc_buffer((x_rows, k // 8), "int32")
            xg = T.sblock_alloc_buffer((x_rows, groups), F32)
            m16 = T.sblock_alloc_buffer((16,), F32)
            r32 = T.sblock_alloc_buffer((BLOCK,), F32)
            for i_ in range(m):
                quantize_x(X, P, xq, xq_head, dx, xinit, xg, m16, r32, i_)
            for jb in T.parallel(stride // per_task):
                with T.sblock("int4_gemv_int8x_task"):
                    acc = T.sblock_alloc_buffer((x_rows, rows, 16), F32, scope="local")
                    sums = T.sblock_alloc_buffer(
                        (x_rows, rows, per_task) if paired else (1, 1, 1), F32, scope="local"
                    )
                    if bool(head_first):
                        for jp in range(per_task // 2):
                            rows_dot(Q, S, Z, B, Y, m, xq, xinit, dx, xg, acc, sums, jb, 2 * jp,
                                     False)  # fmt: skip
                            rows_dot(Q, S, Z, B, Y, m, xq_head, xinit, dx, xg, acc, sums, jb,
                                     2 * jp + 1, True)  # fmt: skip
                    else:
                        for ji in range(per_task):
                            rows_dot(Q, S, Z, B, Y, m, xq, xinit, dx, xg, acc, sums, jb, ji,
                                     False)  # fmt: skip
                    if paired:
                        for i in T.unroll(x_rows):
                            if i < m:
                                for r in T.unroll(rows // 2):
                                    for ji in T.vectorized(per_task):
                                        Y[i, row_of(r, jb, ji)] = glu(
                                            sums[i, r, ji],
                                            sums[i, r + rows // 2, ji],
                                            B,
                                            row_of(r, jb, ji),
                                        )

    return gemv_int8x


def _combine(largest: bool, a, b):
    return T.max(a, b) if largest else a + b


@T.macro
def fold16(t16, largest):
    """t16[0] = the max (largest) or the sum of t16's 16 values, by a tree of vector halves
    (the other lanes are spent)."""
    for i in T.vectorized(8):
        t16[i] = _combine(largest, t16[i], t16[i + 8])
    for i in T.vectorized(4):
        t16[i] = _combine(largest, t16[i], t16[i + 4])
    for i in T.vectorized(2):
        t16[i] = _combine(largest, t16[i], t16[i + 2])
    t16[0] = _combine(largest, t16[0], t16[1])


def int8x_reference(
    x: np.ndarray, q: np.ndarray, scales: np.ndarray, zeros: np.ndarray | float, group_size: int
) -> np.ndarray:
    """What the int8-activation GEMV computes, in numpy: x[K] (after any perm), q[N, K] codes,
    scales[N, K/g], zeros[N, K/g] or a constant -> y[N] in f64 (before the bias)."""
    x = x.astype(np.float32).reshape(-1, BLOCK)
    amax = np.abs(x).max(axis=1, keepdims=True)
    inv = np.where(amax > 0, np.float32(127) / np.where(amax > 0, amax, 1), 0).astype(np.float32)
    v = x * inv
    xq = np.where(v < 0, -np.floor(-v + 0.5), np.floor(v + 0.5))  # llvm.round: half away from 0
    dx = (amax / np.float32(127)).astype(np.float64)[:, 0]
    per_group = group_size // BLOCK
    s = np.repeat(scales.astype(np.float32), per_group, axis=1).astype(np.float64)
    z = np.asarray(zeros, np.float32)
    z = np.repeat(z, per_group, axis=1) if z.ndim else np.full(s.shape, z)
    n = q.shape[0]
    dots = (q.reshape(n, -1, BLOCK).astype(np.float64) * xq).sum(axis=2)  # [N, blocks]
    return (s * dx * (dots - z.astype(np.float64) * xq.sum(axis=1))).sum(axis=1)
