"""Int4 prefill (M > GEMV_ROWS rows of x) with int8 activations on AVX-512 VNNI.

The float prefill GEMM (int4_cpu.py) dequantizes a band of weights to f32 and multiplies with
FMAs: 16 multiply-adds per instruction. Here x is rounded to int8 per block of 32 inputs, as
the int8-x GEMV does (int4_int8x_cpu.py, same rounding, same `int8x_reference`), and the
weights stay 4-bit: one `vpdpbusd` is 64 multiply-adds.

The vector lanes are tokens. x is laid out once per call in panels of 16 tokens,
xp[panel, step, h, 16 tokens x 4 bytes], step s holding inputs 8s .. 8s + 7: h = 0 the even
ones, h = 1 the odd ones. A weight row's 4 packed bytes of step s (its 8 nibbles; the low
nibbles are the even inputs) are broadcast to every lane from where they are stored, so the
weights need no repacking; their low nibbles then meet xp[., s, 0] and their high nibbles
xp[., s, 1] in two vpdpbusd, the nibbles as the unsigned operand and x as the signed one.
Each block of 32 inputs sums in int32, then enters the f32 accumulator with its scales:

    acc[row, token] += s[row, group] * (dx[token, b] * dot - z[row, group] * dxsum[token, b])

with dx x's block scale and dxsum = dx times the sum of the block's int8 codes (z = 8 when
symmetric). A register tile is 4 weight rows by PANELS panels of 16 tokens; with swiglu its
first 2 rows are gate rows j.., the other 2 their up rows j + N/2.., combined on output.
Needs int4_int8x_cpu.supports(spec) (K % 64 == 0, group size a multiple of 32).

Alone, 2 threads, M = 128, SmolLM2's shapes (N x K = 576 x 576, 3072 x 576, 576 x 1536,
49152 x 576): 255-316 GOP/s against 93-163 for the float GEMM; SmolLM2's prefill of 128
tokens 2.0x faster (codegen/NOTES.md). vpdpbusd (one port) bounds it, with the int32 to f32
conversion once per block of 32 inputs beside it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from tvm.script import tirx as T

from .int4_int8x_cpu import BLOCK, DPBUSD, fold16, tasks_per_iteration
from .linear_cpu import _largest_divisor

if TYPE_CHECKING:  # int4_cpu imports this module
    from .int4_cpu import Int4Spec

F32 = "float32"
LANES = 16  # tokens per panel: the int32 lanes of a zmm
PANELS = 2  # panels per register tile
STEP = 8  # inputs per step: 4 packed bytes of a weight row


def int8x_gemm(
    spec: Int4Spec,
    x_at: Callable,
    scale: Callable,
    zero: Callable,
    epilogue: Callable,
    glu: Callable | None = None,
) -> Callable:
    """The T.macro gemm_int8x(X, Q, S, Z, B, P, Y, m) for int4_cpu.int4_kernel's spec and
    helpers: y[m, N] (or [m, N/2] with `glu`) for any m, each weight dword broadcast once per
    tile and used by every panel in it."""
    n, k, g = spec.n, spec.k, spec.group_size
    steps, blocks = k // STEP, k // BLOCK
    paired = glu is not None
    # Weight rows per register tile: rows x PANELS int32 and f32 accumulators (16 zmm at 4 x 2)
    # and the panels' x vectors, within the 32 registers. (2 rows x 4 panels: 10% slower.)
    rows = 2 * _largest_divisor(n // 2, (2, 1)) if paired else _largest_divisor(n, (4, 2, 1))
    half = rows // 2
    tiles = n // rows
    per_task = tasks_per_iteration(tiles)

    def row_of(t, r):
        """The weight row in row r of tile t: with glu, gate rows then their up rows."""
        if not paired:
            return t * rows + r
        return t * half + r % half + r // half * (n // 2)

    def column(t, r):
        """The output column of tile t's row r (with glu, of its r-th gate/up pair)."""
        return t * half + r if paired else row_of(t, r)

    def finish(acc, B, t, r, c, lane):
        """The output of tile t's row (or pair) r for a token: the epilogue or glu."""
        if paired:
            return glu(acc[r, c, lane], acc[r + half, c, lane], B, column(t, r))
        return epilogue(acc[r, c, lane], B, column(t, r))

    def nibbles(Q, row, s, high):
        """A weight row's 8 inputs of step s, 4 nibbles (even or odd inputs) per byte, in
        every lane: the 4 packed bytes masked or shifted as one scalar, then broadcast (10-15%
        faster than masking and shifting the broadcast vector, which shares vpdpbusd's port)."""
        word = T.reinterpret("uint32", Q[row, T.Ramp(s * 4, 1, 4)])
        if high:
            word = T.shift_right(word, T.uint32(4))
        word = T.bitwise_and(word, T.uint32(0x0F0F0F0F))
        return T.reinterpret("int8x64", T.Broadcast(word, LANES))

    @T.macro
    def quantize(X, P, xp, dx, dxsum, m, panels):
        """x into xp, dx and dxsum; tokens past m get zeros (their outputs are not stored)."""
        for p in T.parallel(panels):
            with T.sblock("int8x_gemm_quantize"):
                q32 = T.sblock_alloc_buffer((BLOCK,), F32, scope="local")
                t16 = T.sblock_alloc_buffer((LANES,), F32, scope="local")
                for lane, b in T.grid(LANES, blocks):
                    for i in T.vectorized(BLOCK):
                        q32[i] = T.if_then_else(
                            p * LANES + lane < m,
                            x_at(X, P, T.min(p * LANES + lane, m - 1), b * BLOCK + i),
                            T.float32(0),
                        )
                    for i in T.vectorized(16):
                        t16[i] = T.max(T.fabs(q32[i]), T.fabs(q32[i + 16]))
                    fold16(t16, True)
                    # t16[0]: the block's largest |x|; t16[1]: 127 over it (0 for a zero block).
                    t16[1] = T.if_then_else(
                        t16[0] > T.float32(0), T.float32(127) / t16[0], T.float32(0)
                    )
                    for i in T.vectorized(BLOCK):
                        q32[i] = T.round(q32[i] * t16[1])
                    dx[p, b, lane] = t16[0] / T.float32(127)
                    for s, h, j in T.grid(BLOCK // STEP, 2, 4):
                        xp[p, b * (BLOCK // STEP) + s, h, lane * 4 + j] = T.Cast(
                            "int8", q32[s * STEP + 2 * j + h]
                        )
                    for i in T.vectorized(16):
                        t16[i] = q32[i] + q32[i + 16]
                    fold16(t16, False)
                    dxsum[p, b, lane] = dx[p, b, lane] * t16[0]

    @T.macro
    def tile(Q, S, Z, B, Y, m, panels, xp, dx, dxsum, dots, acc, out, t, pp):
        """Tile t's rows against panels pp * PANELS .. (the last repeated past the end)."""
        for r, c in T.grid(rows, PANELS):
            for lane in T.vectorized(LANES):
                acc[r, c, lane] = T.float32(0)
        for b in range(blocks):
            for r, c in T.grid(rows, PANELS):
                for lane in T.vectorized(LANES):
                    dots[r, c, lane] = 0
            for s in T.unroll(BLOCK // STEP):
                for r in T.unroll(rows):
                    for c in T.unroll(PANELS):
                        dots[r, c, T.Ramp(0, 1, LANES)] = T.call_llvm_pure_intrin(
                            "int32x16",
                            DPBUSD,
                            T.call_llvm_pure_intrin(
                                "int32x16",
                                DPBUSD,
                                dots[r, c, T.Ramp(0, 1, LANES)],
                                nibbles(Q, row_of(t, r), b * 4 + s, False),
                                xp[
                                    T.min(pp * PANELS + c, panels - 1),
                                    b * 4 + s,
                                    0,
                                    T.Ramp(0, 1, 64),
                                ],
                            ),
                            nibbles(Q, row_of(t, r), b * 4 + s, True),
                            xp[T.min(pp * PANELS + c, panels - 1), b * 4 + s, 1, T.Ramp(0, 1, 64)],
                        )
            for r in T.unroll(rows):
                for c in T.unroll(PANELS):
                    for lane in T.vectorized(LANES):
                        acc[r, c, lane] = acc[r, c, lane] + scale(
                            S, row_of(t, r), b * BLOCK // g
                        ) * (
                            dx[T.min(pp * PANELS + c, panels - 1), b, lane]
                            * T.Cast(F32, dots[r, c, lane])
                            - zero(Z, row_of(t, r), b * BLOCK // g)
                            * dxsum[T.min(pp * PANELS + c, panels - 1), b, lane]
                        )
        # The epilogue vectorized over a panel's tokens, then stored token by token.
        for c in T.unroll(PANELS):
            for r in T.unroll(half if paired else rows):
                for lane in T.vectorized(LANES):
                    out[lane] = finish(acc, B, t, r, c, lane)
                for lane in range(LANES):
                    if (pp * PANELS + c) * LANES + lane < m:
                        Y[(pp * PANELS + c) * LANES + lane, column(t, r)] = out[lane]

    @T.macro
    def gemm_int8x(X, Q, S, Z, B, P, Y, m):
        with T.sblock("int4_gemm_int8x"):
            xp = T.sblock_alloc_buffer(((m + LANES - 1) // LANES, steps, 2, 4 * LANES), "int8")
            dx = T.sblock_alloc_buffer(((m + LANES - 1) // LANES, blocks, LANES), F32)
            dxsum = T.sblock_alloc_buffer(((m + LANES - 1) // LANES, blocks, LANES), F32)
            quantize(X, P, xp, dx, dxsum, m, (m + LANES - 1) // LANES)
            for jb in T.parallel(tiles // per_task):
                with T.sblock("int4_gemm_int8x_task"):
                    dots = T.sblock_alloc_buffer((rows, PANELS, LANES), "int32", scope="local")
                    acc = T.sblock_alloc_buffer((rows, PANELS, LANES), F32, scope="local")
                    out = T.sblock_alloc_buffer((LANES,), spec.x_dtype, scope="local")
                    for ji in range(per_task):
                        for pp in range((m + LANES * PANELS - 1) // (LANES * PANELS)):
                            tile(Q, S, Z, B, Y, m, (m + LANES - 1) // LANES, xp, dx, dxsum,
                                 dots, acc, out, jb * per_task + ji, pp)  # fmt: skip

    return gemm_int8x
