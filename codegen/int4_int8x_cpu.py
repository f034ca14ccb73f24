"""Int4 decode with int8 activations on AVX-512 VNNI: the opt-in M = 1 path of int4_cpu.py.

x is quantized to int8 per block of 32 inputs (scale amax / 127, as llama.cpp's Q8 blocks),
then each 64 packed bytes of a weight row (128 inputs) take two `vpdpbusd`: the low and high
nibbles as the unsigned operand, x as the signed one. ~9 vector uops per 64 bytes against ~28
for the float lookup GEMV, for a relative error of ~5e-3 of max |y|. Symmetric weights and
K % 128 == 0 only (int4_cpu.py checks); rows are spread over tasks as in its float GEMV.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from tvm.script import tirx as T

from .linear_cpu import _largest_divisor

if TYPE_CHECKING:  # int4_cpu imports this module
    from .int4_cpu import Int4Spec, Int4Tiling

F32 = "float32"
PERMUTE = "llvm.x86.avx512.permvar.sf.512"
DPBUSD = "llvm.x86.avx512.vpdpbusd.512"


def tasks_per_iteration(tasks: int) -> int:
    """Consecutive tasks per parallel iteration: each iteration allocates its registers' spill
    space from TVM's workspace, which costs as much as a small task; keep >= 16 iterations."""
    return _largest_divisor(tasks, tuple(d for d in (16, 8, 4, 2, 1) if tasks >= 16 * d or d == 1))


def int8x_gemv(
    spec: Int4Spec,
    tiles: Int4Tiling,
    x_at: Callable,
    scale: Callable,
    epilogue: Callable,
    lane_sum: Callable,
) -> Callable:
    """The T.macro gemv_int8x(X, Q, S, B, P, Y) for int4_cpu.int4_kernel's spec and tiles."""
    n, k, g, rows = spec.n, spec.k, spec.group_size, tiles.gemv_rows
    stride = n // rows
    per_task = tasks_per_iteration(stride)

    def dot_chunk(Q, row, c, xq, xinit):
        """Per lane, sum of 8 nibbles times int8 x (+ the zero-point start), as int32x16."""
        packed8 = Q[row, T.Ramp(c * 64, 1, 64)]
        low8 = T.reinterpret("int8x64", T.bitwise_and(packed8, T.Broadcast(T.uint8(15), 64)))
        high8 = T.reinterpret("int8x64", T.shift_right(packed8, T.Broadcast(T.uint8(4), 64)))
        lows = T.call_llvm_pure_intrin(
            "int32x16", DPBUSD, xinit[T.Ramp(c * 16, 1, 16)], low8, xq[T.Ramp(c * 128, 1, 64)]
        )
        return T.call_llvm_pure_intrin(
            "int32x16", DPBUSD, lows, high8, xq[T.Ramp(c * 128 + 64, 1, 64)]
        )

    def dx_lanes(dx, c):
        """The x block scale of each vpdpbusd lane of chunk c: lanes 4j..4j+3 share block j."""
        return T.call_llvm_pure_intrin(
            "float32x16", PERMUTE, dx[T.Ramp(c * 4, 1, 16)], T.Ramp(0, 1, 16) // T.Broadcast(4, 16)
        )

    # Decode with int8 activations: x quantized per block of 32 (scale amax / 127), stored in
    # the reordered order of 128-input chunks (64 even inputs, then 64 odd). vpdpbusd lane l
    # of a 64-byte chunk sums 8 consecutive inputs (4 low and 4 high nibbles), so lanes
    # 4j..4j+3 share a block of x and lanes (8l) // g share a weight group; the zero point
    # enters as the accumulator's start, -8 * sum(xq) per lane.
    n_chunks, groups = k // 128, k // g

    @T.macro
    def gemv_int8x(X, Q, S, B, P, Y):
        with T.sblock("int4_gemv_int8x"):
            xq = T.sblock_alloc_buffer((k,), "int8")
            # Padded: dx_lanes reads 16 scales from block 4c, of which it uses 4.
            dx = T.sblock_alloc_buffer((k // 32 + 16,), F32)
            xinit = T.sblock_alloc_buffer((k // 8,), "int32")
            m16 = T.sblock_alloc_buffer((16,), F32)
            for b in range(k // 32):
                for i in T.vectorized(16):
                    m16[i] = T.max(
                        T.fabs(x_at(X, P, 0, b * 32 + i)), T.fabs(x_at(X, P, 0, b * 32 + 16 + i))
                    )
                for i in T.vectorized(8):
                    m16[i] = T.max(m16[i], m16[i + 8])
                for i in T.vectorized(4):
                    m16[i] = T.max(m16[i], m16[i + 4])
                for i in T.vectorized(2):
                    m16[i] = T.max(m16[i], m16[i + 2])
                m16[0] = T.max(m16[0], m16[1])
                dx[b] = m16[0] / T.float32(127)
                m16[1] = T.if_then_else(
                    m16[0] > T.float32(0), T.float32(127) / m16[0], T.float32(0)
                )
                for h in range(2):
                    for i in T.vectorized(16):
                        xq[b // 4 * 128 + h * 64 + b % 4 * 16 + i] = T.Cast(
                            "int8", T.round(x_at(X, P, 0, b * 32 + 2 * i + h) * m16[1])
                        )
            for c in range(n_chunks):
                for lane in T.vectorized(16):
                    xinit[c * 16 + lane] = T.int32(-8) * (
                        T.Cast("int32", xq[c * 128 + 4 * lane])
                        + T.Cast("int32", xq[c * 128 + 4 * lane + 1])
                        + T.Cast("int32", xq[c * 128 + 4 * lane + 2])
                        + T.Cast("int32", xq[c * 128 + 4 * lane + 3])
                        + T.Cast("int32", xq[c * 128 + 64 + 4 * lane])
                        + T.Cast("int32", xq[c * 128 + 64 + 4 * lane + 1])
                        + T.Cast("int32", xq[c * 128 + 64 + 4 * lane + 2])
                        + T.Cast("int32", xq[c * 128 + 64 + 4 * lane + 3])
                    )
            for jb in T.parallel(stride // per_task):
                with T.sblock("int4_gemv_int8x_task"):
                    acc = T.sblock_alloc_buffer((1, rows, 16), F32, scope="local")
                    sf = T.sblock_alloc_buffer((rows, groups + 16), F32, scope="local")
                    for ji in range(per_task):
                        for r in T.unroll(rows):
                            for gi in T.vectorized(groups):
                                sf[r, gi] = scale(S, r * stride + jb * per_task + ji, gi)
                            for lane in T.vectorized(16):
                                sf[r, groups + lane] = T.float32(0)
                                acc[0, r, lane] = T.float32(0)
                        for c in range(n_chunks):
                            for r in T.unroll(rows):
                                acc[0, r, T.Ramp(0, 1, 16)] = acc[0, r, T.Ramp(0, 1, 16)] + T.Cast(
                                    "float32x16",
                                    dot_chunk(Q, r * stride + jb * per_task + ji, c, xq, xinit),
                                ) * (
                                    T.call_llvm_pure_intrin(
                                        "float32x16",
                                        PERMUTE,
                                        sf[r, T.Ramp(c * 128 // g, 1, 16)],
                                        T.Ramp(0, 8, 16) // T.Broadcast(g, 16),
                                    )
                                    * dx_lanes(dx, c)
                                )
                        for r in T.unroll(rows):
                            lane_sum(acc, 0, r)
                            Y[0, r * stride + jb * per_task + ji] = epilogue(
                                acc[0, r, 0], B, r * stride + jb * per_task + ji
                            )

    return gemv_int8x
