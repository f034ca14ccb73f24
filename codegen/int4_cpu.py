"""Int4 linear layers on CPU as hand-written TIR: y = cast(x @ dequant(q).T + b), f32 accumulation.

dequant(q)[n, k] = scales[n, k // g] * (nibble(q, n, k) - zero), zero = zeros[n, k // g] or 8;
q is u8[N, K/2], element 2i in the low nibble of byte i. Like linear_cpu.py, one PrimFunc per
(N, K, g, dtypes, optional inputs) picks its loop nest from the row count M at run time:
- M = 1 (decode): each packed byte is read exactly once. Per (row, group) a 16-entry table
  s * (j - zero), j = 0..15, is built in one register (one multiply, the scale broadcast from
  the task's f32 copy of its rows' scales), and one `vpermps` per 16 nibbles looks the
  dequantized weights up (the permute reads only an index's low 4 bits, so the low nibble
  needs no mask): per 16 bytes, one widening load, one shift, two permutes and two FMAs. x is
  reordered once per call to match: in each chunk of 2L inputs, the L even ones (low
  nibbles) first, then the L odd ones. Rows are spread over tasks as in linear_cpu.
- 1 < M <= GEMV_ROWS (batched decode): the same, each looked-up weight vector multiplied with
  2 or 4 rows of x.
- M > GEMV_ROWS (prefill): each task dequantizes a band of weight rows to f32 once (it stays
  in L2) and runs linear_cpu's outer-product micro-kernel over x^T panels in the same order.
Without AVX-512 the lookup is replaced by a convert and an FMA per vector. With
`int8_activations` (the compile default on VNNI CPUs), every path instead rounds x to int8 and
uses vpdpbusd, llama.cpp's trade: decode and batched decode (codegen/int4_int8x_cpu.py) ~3-4x
the float GEMV's speed per core, reaching the memory's read bandwidth on one thread; prefill
(codegen/int4_int8x_gemm_cpu.py) ~2-3x the float GEMM's.
An optional perm (act-order: y = x[..., perm] @ w.T) is applied when x is reordered, for free.
With `swiglu` (a fused gate/up matrix, gate rows first) the kernel returns silu(gate) * up,
[M, N/2], from its accumulators (int8 x only): in the GEMVs a task's rows r and r + rows/2
are gate and up rows j and j + N/2; in the GEMM each register tile's first half of rows are
gate rows, the rest their up rows.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from tvm import relax as rx
from tvm import tirx
from tvm.script import tirx as T

from . import int4_int8x_cpu, tir_math
from .int4_int8x_cpu import int8x_gemv, tasks_per_iteration
from .int4_int8x_gemm_cpu import int8x_gemm
from .linear_cpu import BAND_BYTES, GEMV_ROWS, _largest_divisor, gemm_band_tiles

F32 = "float32"
PERMUTE = "llvm.x86.avx512.permvar.sf.512"


@dataclass(frozen=True)
class Int4Spec:
    """The static facts one kernel is specialized on; M (rows of x) stays dynamic."""

    n: int
    k: int
    group_size: int
    x_dtype: str
    scale_dtype: str
    zero_dtype: str | None = None  # None: symmetric, zero point 8
    bias_dtype: str | None = None
    has_perm: bool = False
    # y's halves combined as silu(gate) * up: y[M, N/2] (ops.Int4Linear.swiglu); int8 x only.
    swiglu: bool = False


@dataclass(frozen=True)
class Int4Tiling:
    """Loop-nest sizes; each divides the dim it tiles, so no loop needs a remainder."""

    lanes: int  # f32 vector lanes; a chunk is `lanes` bytes = 2 * lanes inputs
    lookup: bool  # AVX-512 vpermps table lookup (needs 16 lanes) or convert + FMA
    gemv_rows: int  # weight rows per GEMV task
    n_tile: int  # weight rows per batched-GEMV task
    x_tile: int  # x rows per batched-GEMV register tile
    gemm_rows: int  # weight rows per GEMM register tile
    tokens: int  # x rows per GEMM register tile (x^T panel width)
    band: int  # weight rows per GEMM task, dequantized to f32 once
    # Every M with x quantized to int8 per block of 32 and VNNI dot products (vpdpbusd), as
    # llama.cpp does: ~3-4x the float GEMV's speed, ~2-3x the float GEMM's, relative error
    # ~5e-3; K % 64 == 0 (int4_int8x_cpu.supports). A numerics trade the caller chooses.
    int8_activations: bool = False


def int4_tiling(
    spec: Int4Spec, vector_bits: int = 512, int8_activations: bool = False
) -> Int4Tiling:
    """Tile sizes for `spec` on a CPU with `vector_bits`-wide registers (see linear_cpu.tiling);
    `int8_activations` needs AVX-512 VNNI and is ignored where it does not apply."""
    lanes = max(4, min(16, vector_bits // 32))
    gemm_rows = _largest_divisor(spec.n, (8, 4, 2, 1))
    bands = [gemm_rows * f for f in (16, 8, 4, 2, 1) if spec.n % (gemm_rows * f) == 0]
    fitting = [b for b in bands if b * spec.k * 4 <= BAND_BYTES] or bands[-1:]
    return Int4Tiling(
        lanes=lanes,
        lookup=lanes == 16,
        gemv_rows=_largest_divisor(spec.n, (8, 4, 2, 1)),
        n_tile=_largest_divisor(spec.n, (4, 2, 1)),
        x_tile=4,
        gemm_rows=gemm_rows,
        tokens=2 * lanes,
        band=next((b for b in fitting if spec.n // b >= 16), fitting[-1]),
        int8_activations=int8_activations and lanes == 16,
    )


@functools.cache
def int4_kernel(spec: Int4Spec, tiles: Int4Tiling) -> tirx.PrimFunc:
    """The PrimFunc (x[M, K], q[N, K/2], scales, [zeros], [perm], [bias], y[M, N]) for `spec`."""
    n, k, g = spec.n, spec.k, spec.group_size
    L, rows, nt, mt = tiles.lanes, tiles.gemv_rows, tiles.n_tile, tiles.x_tile
    mr, tokens, band = tiles.gemm_rows, tiles.tokens, tiles.band
    assert g % (2 * L) == 0 and k % g == 0, (spec, tiles)
    chunk = 2 * L  # inputs per chunk of L packed bytes
    chunks = g // chunk  # chunks per group
    int8x = tiles.int8_activations and int4_int8x_cpu.supports(spec)
    vf, vi = f"float32x{L}", f"int32x{L}"

    def x_at(X, P, i, kk):
        """x[i, perm[kk]] (or x[i, kk]) in f32; kk in the original input order."""
        return T.Cast(F32, X[i, P[kk] if spec.has_perm else kk])

    def scale(S, row, gi):
        return T.Cast(F32, S[row, gi])

    def zero(Z, row, gi):
        return T.Cast(F32, Z[row, gi]) if spec.zero_dtype is not None else T.float32(8)

    def biased(acc, B, j):
        return acc + T.Cast(F32, B[j]) if spec.bias_dtype is not None else acc

    def epilogue(acc, B, j):
        return T.Cast(spec.x_dtype, biased(acc, B, j))

    def glu(gate, up, B, j):
        """Output j of a swiglu kernel from the sums of weight rows j (gate) and j + N/2 (up)."""
        return T.Cast(spec.x_dtype, tir_math.silu(biased(gate, B, j)) * biased(up, B, j + n // 2))

    def lookup(tab, t, idx):
        """16 dequantized weights for the nibbles in idx's low 4 bits, from table row t."""
        if tiles.lookup:
            return T.call_llvm_pure_intrin(vf, PERMUTE, tab[t, T.Ramp(0, 1, L)], idx)
        nibble = T.Cast(vf, T.bitwise_and(idx, T.Broadcast(15, L)))
        return nibble * T.Broadcast(tab[t, 0], L) - T.Broadcast(tab[t, 1], L)

    # No let-bound vectors: a let var inside an sblock breaks its inferred read regions
    # (NOTES.md), so each use repeats the load and LLVM merges the copies.
    def packed(Q, row, gi, c):
        return T.Cast(vi, Q[row, T.Ramp(gi * (g // 2) + c * L, 1, L)])

    def low(tab, t, Q, row, gi, c):
        return lookup(tab, t, packed(Q, row, gi, c))

    def high(tab, t, Q, row, gi, c):
        return lookup(tab, t, T.shift_right(packed(Q, row, gi, c), T.Broadcast(4, L)))

    # Each task widens its rows' scales (and zeros) to f32 once, so that a table costs one
    # vector op with the scale broadcast from memory: sz[t, 0, gi] = s, sz[t, 1, gi] = zero.
    @T.macro
    def widen_scales(sz, t, S, Z, row):
        for gi in T.vectorized(k // g):
            sz[t, 0, gi] = scale(S, row, gi)
        if bool(spec.zero_dtype is not None):
            for gi in T.vectorized(k // g):
                sz[t, 1, gi] = zero(Z, row, gi)

    def zero_of(sz, t, gi):
        return sz[t, 1, gi] if spec.zero_dtype is not None else T.float32(8)

    # Lookup: tab[t, j] = s * (j - zero), as the reference computes it. Otherwise tab[t] holds
    # s and s * zero for a convert + FMA.
    @T.macro
    def make_table(tab, t, sz, gi):
        if bool(tiles.lookup):
            for j in T.vectorized(16):
                tab[t, j] = sz[t, 0, gi] * (T.Cast(F32, j) - zero_of(sz, t, gi))
        else:
            tab[t, 0] = sz[t, 0, gi]
            tab[t, 1] = sz[t, 0, gi] * zero_of(sz, t, gi)

    # Reorder (and gather, with a perm) rows of x into xd once per call, widened to f32.
    # Vector lanes, except for bf16 x, which TVM 0.27's vectorizer cannot take (NOTES.md).
    x_lanes = T.serial if spec.x_dtype == "bfloat16" else T.vectorized

    @T.macro
    def reorder_x(X, P, xd, m):
        for i, c, h in T.grid(m, k // chunk, 2):
            for lane in x_lanes(L):
                xd[i, c * chunk + h * L + lane] = x_at(X, P, i, c * chunk + 2 * lane + h)

    @T.macro
    def lane_sum(acc, a, b):
        if bool(L >= 16):
            for lane in T.vectorized(8):
                acc[a, b, lane] = acc[a, b, lane] + acc[a, b, lane + 8]
        if bool(L >= 8):
            for lane in T.vectorized(4):
                acc[a, b, lane] = acc[a, b, lane] + acc[a, b, lane + 4]
        for lane in T.vectorized(2):
            acc[a, b, lane] = acc[a, b, lane] + acc[a, b, lane + 2]
        acc[a, b, 0] = acc[a, b, 0] + acc[a, b, 1]

    # Decode: task jo reduces rows jo, jo + N/R, ... (long sequential streams, linear_cpu.py).
    stride, bstride = n // rows, n // nt
    # Rows jo of several consecutive tasks per parallel iteration: each iteration allocates
    # its registers' spill space from TVM's workspace, which costs as much as a small task.
    per_task = tasks_per_iteration(stride)

    @T.macro
    def gemv(X, Q, S, Z, B, P, Y):
        with T.sblock("int4_gemv"):
            xd = T.sblock_alloc_buffer((1, k), F32)
            reorder_x(X, P, xd, 1)
            for jb in T.parallel(stride // per_task):
                with T.sblock("int4_gemv_task"):
                    acc = T.sblock_alloc_buffer((1, rows, L), F32, scope="local")
                    tab = T.sblock_alloc_buffer((rows, 16), F32, scope="local")
                    sz = T.sblock_alloc_buffer((rows, 2, k // g), F32, scope="local")
                    for ji in range(per_task):
                        for r in T.unroll(rows):
                            widen_scales(sz, r, S, Z, r * stride + jb * per_task + ji)
                            for lane in T.vectorized(L):
                                acc[0, r, lane] = T.float32(0)
                        for gi in range(k // g):
                            for r in T.unroll(rows):
                                make_table(tab, r, sz, gi)
                                for c in T.unroll(chunks):
                                    acc[0, r, T.Ramp(0, 1, L)] = (
                                        acc[0, r, T.Ramp(0, 1, L)]
                                        + xd[0, T.Ramp(gi * g + c * chunk, 1, L)]
                                        * low(tab, r, Q, r * stride + jb * per_task + ji, gi, c)
                                        + xd[0, T.Ramp(gi * g + c * chunk + L, 1, L)]
                                        * high(tab, r, Q, r * stride + jb * per_task + ji, gi, c)
                                    )
                        for r in T.unroll(rows):
                            lane_sum(acc, 0, r)
                            Y[0, r * stride + jb * per_task + ji] = epilogue(
                                acc[0, r, 0], B, r * stride + jb * per_task + ji
                            )

    # Batched decode: each looked-up weight vector serves `xt_` rows of x (2 or 4: fewer
    # than M wastes no FMAs on repeated rows; more would run out of registers).
    b_per_task = tasks_per_iteration(bstride)

    @T.macro
    def gemv_batch(X, Q, S, Z, B, P, Y, m, xt_):
        with T.sblock("int4_gemv_batch"):
            xd = T.sblock_alloc_buffer((GEMV_ROWS, k), F32)
            reorder_x(X, P, xd, m)
            for jb in T.parallel(bstride // b_per_task):
                with T.sblock("int4_gemv_batch_task"):
                    acc = T.sblock_alloc_buffer((xt_, nt, L), F32, scope="local")
                    tab = T.sblock_alloc_buffer((nt, 16), F32, scope="local")
                    sz = T.sblock_alloc_buffer((nt, 2, k // g), F32, scope="local")
                    for ji, io in T.grid(b_per_task, (m + xt_ - 1) // xt_):
                        for r in T.unroll(nt):
                            widen_scales(sz, r, S, Z, r * bstride + jb * b_per_task + ji)
                        for ii in T.unroll(xt_):
                            for r in T.unroll(nt):
                                for lane in T.vectorized(L):
                                    acc[ii, r, lane] = T.float32(0)
                        for gi in range(k // g):
                            for r in T.unroll(nt):
                                make_table(tab, r, sz, gi)
                                for c in T.unroll(chunks):
                                    for ii in T.unroll(xt_):
                                        # Rows past M repeat the last one and are not stored.
                                        acc[ii, r, T.Ramp(0, 1, L)] = (
                                            acc[ii, r, T.Ramp(0, 1, L)]
                                            + xd[
                                                T.min(io * xt_ + ii, m - 1),
                                                T.Ramp(gi * g + c * chunk, 1, L),
                                            ]
                                            * low(
                                                tab, r, Q, r * bstride + jb * b_per_task + ji, gi, c
                                            )
                                            + xd[
                                                T.min(io * xt_ + ii, m - 1),
                                                T.Ramp(gi * g + c * chunk + L, 1, L),
                                            ]
                                            * high(
                                                tab, r, Q, r * bstride + jb * b_per_task + ji, gi, c
                                            )
                                        )
                        for ii in T.unroll(xt_):
                            for r in T.unroll(nt):
                                if io * xt_ + ii < m:
                                    lane_sum(acc, ii, r)
                                    Y[io * xt_ + ii, r * bstride + jb * b_per_task + ji] = epilogue(
                                        acc[ii, r, 0], B, r * bstride + jb * b_per_task + ji
                                    )

    # Prefill in float x: x^T panels in the reordered input order, a band of weights
    # dequantized once per task in the same order, then linear_cpu's outer-product register
    # tile. (A swiglu kernel always has int8 x: int4_int8x_gemm_cpu.py.)
    n_out = n // 2 if spec.swiglu else n
    band_tiles = gemm_band_tiles(k, tokens, mr, band, epilogue)

    @T.macro
    def gemm(X, Q, S, Z, B, P, Y, m):
        with T.sblock("int4_gemm"):
            xt = T.sblock_alloc_buffer(((m + tokens - 1) // tokens, k, tokens), F32)
            for p in T.parallel((m + tokens - 1) // tokens):
                for c, h, lane, tok in T.grid(k // chunk, 2, L, tokens):
                    xt[p, c * chunk + h * L + lane, tok] = T.if_then_else(
                        p * tokens + tok < m,
                        x_at(X, P, T.min(p * tokens + tok, m - 1), c * chunk + 2 * lane + h),
                        T.float32(0),
                    )
            for jo in T.parallel(n // band):
                with T.sblock("int4_gemm_band"):
                    wf = T.sblock_alloc_buffer((band, k), F32)
                    for r, gi, c in T.grid(band, k // g, chunks):
                        for lane in T.vectorized(L):
                            wf[r, gi * g + c * chunk + lane] = scale(S, jo * band + r, gi) * (
                                T.Cast(
                                    F32,
                                    T.bitwise_and(
                                        Q[jo * band + r, gi * (g // 2) + c * L + lane],
                                        T.uint8(15),
                                    ),
                                )
                                - zero(Z, jo * band + r, gi)
                            )
                            wf[r, gi * g + c * chunk + L + lane] = scale(S, jo * band + r, gi) * (
                                T.Cast(
                                    F32,
                                    T.shift_right(
                                        Q[jo * band + r, gi * (g // 2) + c * L + lane],
                                        T.uint8(4),
                                    ),
                                )
                                - zero(Z, jo * band + r, gi)
                            )
                    band_tiles(wf, xt, B, Y, m, jo)

    # Int8 x: one macro per (weight rows per task, rows of x). Every (weight row, x row) pair
    # holds an accumulator and its operands in registers: 8 or 16 pairs.
    # With swiglu every task holds pairs of rows (j, j + N/2): an even row count.
    r2 = _largest_divisor(n, (2, 1))
    r8 = 2 if spec.swiglu else 1
    assert int8x or not spec.swiglu, spec
    int8x_paths = {
        (rows_, x_rows): int8x_gemv(
            spec, rows_, x_rows, x_at, scale, zero, epilogue, lane_sum, glu if spec.swiglu else None
        )
        for rows_, x_rows in ((rows, 1), (nt, 2), (r2, mt), (r8, 8))
        if int8x
    }
    gemm_int8x = int8x_gemm(spec, x_at, scale, zero, epilogue, glu if spec.swiglu else None)
    xd_, sd = spec.x_dtype, spec.scale_dtype
    zd = spec.zero_dtype or sd
    bd = spec.bias_dtype or F32

    # Every optional input is declared here; those the spec lacks are never read and are
    # dropped from the parameter list below.
    @T.prim_func(s_tir=True, private=True)
    def int4_linear(
        x: T.handle,
        Q: T.Buffer((n, k // 2), "uint8"),
        S: T.Buffer((n, k // g), sd),
        Z: T.Buffer((n, k // g), zd),
        P: T.Buffer((k,), "int32"),
        B: T.Buffer((n,), bd),
        y: T.handle,
    ):
        T.func_attr({"tirx.noalias": True})
        m = T.int64()
        X = T.match_buffer(x, (m, k), xd_)
        Y = T.match_buffer(y, (m, n_out), xd_)
        if m == 1:
            if bool(int8x):
                int8x_paths[rows, 1](X, Q, S, Z, B, P, Y, T.Cast("int32", m))
            else:
                gemv(X, Q, S, Z, B, P, Y)
        elif m == 2:
            if bool(int8x):
                int8x_paths[nt, 2](X, Q, S, Z, B, P, Y, T.Cast("int32", m))
            else:
                gemv_batch(X, Q, S, Z, B, P, Y, m, 2)
        elif m <= mt:
            if bool(int8x):
                int8x_paths[r2, mt](X, Q, S, Z, B, P, Y, T.Cast("int32", m))
            else:
                gemv_batch(X, Q, S, Z, B, P, Y, m, mt)
        elif m <= GEMV_ROWS:
            if bool(int8x):
                int8x_paths[r8, 8](X, Q, S, Z, B, P, Y, T.Cast("int32", m))
            else:
                gemv_batch(X, Q, S, Z, B, P, Y, m, mt)
        elif bool(int8x):
            gemm_int8x(X, Q, S, Z, B, P, Y, T.Cast("int32", m))
        else:
            gemm(X, Q, S, Z, B, P, Y, m)

    # Inputs in Int4Linear's order: x, q, scales, zeros?, perm?, bias?.
    x_p, q_p, s_p, z_p, p_p, b_p, y_p = int4_linear.params
    keep = [x_p, q_p, s_p]
    keep += [z_p] if spec.zero_dtype is not None else []
    keep += [p_p] if spec.has_perm else []
    keep += [b_p] if spec.bias_dtype is not None else []
    func = tirx.PrimFunc([*keep, y_p], int4_linear.body, int4_linear.ret_type, int4_linear.attrs)
    # Already scheduled (the default CPU rule leaves it alone); opaque to FuseOps.
    return func.with_attrs({"tirx.is_scheduled": True, "op_pattern": 8})


def _name(spec: Int4Spec) -> str:
    parts = [f"int4_linear_n{spec.n}_k{spec.k}_g{spec.group_size}"]
    parts += ["zeros"] if spec.zero_dtype else []
    parts += ["bias"] if spec.bias_dtype else []
    parts += ["perm"] if spec.has_perm else []
    parts += ["swiglu"] if spec.swiglu else []
    return "_".join(parts)


def emit_int4_linear(
    bb: rx.BlockBuilder,
    x: rx.Expr,
    q: rx.Expr,
    scales: rx.Expr,
    zeros: rx.Expr | None,
    perm: rx.Expr | None,
    bias: rx.Expr | None,
    group_size: int,
    vector_bits: int,
    int8_activations: bool = False,
    swiglu: bool = False,
) -> rx.Expr | None:
    """call_tir of the kernel for x[..., K] @ dequant(q).T (+ bias) in x's dtype (with swiglu,
    silu of its first half times its second), or None when a shape is symbolic or the kernel
    lacks the epilogue, leaving the caller to take over."""
    n, half_k = q.ty.shape
    if not all(isinstance(d, tirx.IntImm) for d in (n, half_k)):
        return None
    spec = Int4Spec(
        n=int(n),
        k=2 * int(half_k),
        group_size=group_size,
        x_dtype=x.ty.dtype,
        scale_dtype=scales.ty.dtype,
        zero_dtype=None if zeros is None else zeros.ty.dtype,
        bias_dtype=None if bias is None else bias.ty.dtype,
        has_perm=perm is not None,
        swiglu=swiglu,
    )
    tiles = int4_tiling(spec, vector_bits, int8_activations)
    if spec.group_size % (2 * tiles.lanes):
        return None
    if swiglu and not (tiles.int8_activations and int4_int8x_cpu.supports(spec)):
        return None  # the float GEMVs have no epilogue: the caller adds the ops after
    gv = bb.add_func(int4_kernel(spec, tiles), _name(spec))
    lead = list(x.ty.shape)[:-1]
    rows = x if len(lead) == 1 else bb.emit(rx.op.reshape(x, [-1, spec.k]))
    args = [rows, q, scales, *(a for a in (zeros, perm, bias) if a is not None)]
    n_out = spec.n // 2 if swiglu else spec.n
    out = rx.TensorType([rows.ty.shape[0], n_out], spec.x_dtype)
    y = bb.emit(rx.call_tir(gv, args, out_ty=out))
    if len(lead) != 1:
        y = bb.emit(rx.op.reshape(y, [*lead, n_out]))
    return y
