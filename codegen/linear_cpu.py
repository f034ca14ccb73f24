"""Linear layers on CPU as hand-written TIR: y = cast(x @ w.T + b), accumulated in f32.

One PrimFunc per (N, K, dtypes, bias) serves prefill and decode: it picks its loop nest from
the row count M at run time, so few distinct kernels are compiled (TVM dedupes equal ones).
- M = 1 (decode): memory-bound. Every weight is read once; a parallel task reduces a few rows
  over K in f32 vector lanes, its rows spread so that each thread reads long sequential
  streams (see `gemv`); then lanes are summed and the epilogue (bias, cast) applied.
- 1 < M <= GEMV_ROWS (batched decode): the same, each widened weight vector multiplied with
  up to `n_tile` rows of x at once.
- M > GEMV_ROWS (prefill): compute-bound, an outer-product kernel. x is packed once per call
  as x^T in panels of `tokens` rows; each parallel task widens a band of weight rows to f32
  (it stays in L2), and a register tile of `gemm_rows` weight rows x `tokens` tokens grows by
  one broadcast weight times one x^T vector per step: no conversions, no lane sums.
Weights stay in the checkpoint's [N, K] layout, so bundles and the interpreter agree on them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

from tvm import relax as rx
from tvm import tirx
from tvm.script import tirx as T

from .tir_math import PREFETCH_BYTES, elements_in, prefetch

F32 = "float32"
# At most this many rows take the GEMV path (decode batches); more take the GEMM path.
GEMV_ROWS = 8


@dataclass(frozen=True)
class LinearSpec:
    """The static facts one kernel is specialized on; M (rows of x) stays dynamic."""

    n: int
    k: int
    x_dtype: str
    w_dtype: str
    out_dtype: str
    bias_dtype: str | None = None


@dataclass(frozen=True)
class Tiling:
    """Loop-nest sizes; each divides the dim it tiles, so no loop needs a remainder."""

    lanes: int  # f32 vector lanes along K (GEMV)
    gemv_rows: int  # weight rows per GEMV task
    n_tile: int  # weight rows and x rows per batched-GEMV register tile
    gemm_rows: int  # weight rows per GEMM register tile
    tokens: int  # x rows per GEMM register tile (x^T panel width)
    band: int  # weight rows per GEMM task, widened to f32 once


# The widened band of weights should stay in L2 (2 MB per core here) beside an x^T panel.
BAND_BYTES = 512 * 1024


def _largest_divisor(n: int, options: tuple[int, ...]) -> int:
    return next(d for d in options if n % d == 0)


def tiling(spec: LinearSpec, vector_bits: int = 512) -> Tiling:
    """Tile sizes for `spec` on a CPU with `vector_bits`-wide registers.

    GEMM: 8 weight rows x 32 tokens (two 16-lane registers) is 16 accumulators of the 32 zmm
    registers. A band is the widest (up to 128 rows) that fits BAND_BYTES in f32 and still
    leaves at least 16 bands to share among the threads.
    """
    f32_lanes = vector_bits // 32
    lanes = _largest_divisor(spec.k, tuple(d for d in (16, 8, 4, 2, 1) if d <= f32_lanes))
    gemm_rows = _largest_divisor(spec.n, (8, 4, 2, 1))
    bands = [gemm_rows * f for f in (16, 8, 4, 2, 1) if spec.n % (gemm_rows * f) == 0]
    fitting = [b for b in bands if b * spec.k * 4 <= BAND_BYTES] or bands[-1:]
    band = next((b for b in fitting if spec.n // b >= 16), fitting[-1])
    return Tiling(
        lanes=lanes,
        gemv_rows=_largest_divisor(spec.n, (8, 4, 2, 1)),
        n_tile=_largest_divisor(spec.n, (4, 2, 1)),
        gemm_rows=gemm_rows,
        tokens=2 * f32_lanes,
        band=band,
    )


def gemm_band_tiles(k: int, tokens: int, mr: int, band: int, epilogue: Callable) -> Callable:
    """The T.macro band_tiles(wf, xt, B, Y, m, jo) of a prefill GEMM task: a band of `band`
    weight rows, already in f32 as wf[band, k], times every x^T panel xt[panel, k, tokens], in
    mr x tokens register tiles (an outer product per input); rows jo * band + ... of Y are
    stored through epilogue(acc, B, row) for the tokens below m. Serves linear_cpu's GEMM and
    int4_cpu's (which dequantizes its band into wf first)."""

    @T.macro
    def band_tiles(wf, xt, B, Y, m, jo):
        for p in range((m + tokens - 1) // tokens):
            for jt in range(band // mr):
                with T.sblock("gemm_tile"):
                    acc = T.sblock_alloc_buffer((mr, tokens), F32, scope="local")
                    for r in T.unroll(mr):
                        for tok in T.vectorized(tokens):
                            acc[r, tok] = T.float32(0)
                    for kk in range(k):
                        for r in T.unroll(mr):
                            for tok in T.vectorized(tokens):
                                acc[r, tok] = acc[r, tok] + wf[jt * mr + r, kk] * xt[p, kk, tok]
                    for r in T.unroll(mr):
                        for tok in range(tokens):
                            if p * tokens + tok < m:
                                Y[p * tokens + tok, jo * band + jt * mr + r] = epilogue(
                                    acc[r, tok], B, jo * band + jt * mr + r
                                )

    return band_tiles


@functools.cache
def linear_kernel(spec: LinearSpec, tiles: Tiling) -> tirx.PrimFunc:
    """The PrimFunc (x[M, K], w[N, K], [bias[N]], y[M, N]) for `spec`; parsing TVMScript costs
    ~0.25 s, and every layer asks for the same few kernels, hence the cache."""
    n, k = spec.n, spec.k
    lanes, rows, nt = tiles.lanes, tiles.gemv_rows, tiles.n_tile
    mr, tokens, band = tiles.gemm_rows, tiles.tokens, tiles.band
    k_steps = k // lanes

    def epilogue(acc: tirx.PrimExpr, bias: tirx.Buffer | None, j: tirx.PrimExpr) -> tirx.PrimExpr:
        if bias is not None:
            acc = acc + T.Cast(F32, bias[j])
        return T.Cast(spec.out_dtype, acc)

    # Sum a row of lanes into lane 0 by halving, in vector steps: a serial chain of scalar
    # adds would cost as much as the dot product itself for K = 896. (Python ints as `if`
    # conditions must be wrapped in bool() in TVMScript.)
    @T.macro
    def lane_sum(acc, r):
        if bool(lanes >= 16):
            for lane in T.vectorized(8):
                acc[r, lane] = acc[r, lane] + acc[r, lane + 8]
        if bool(lanes >= 8):
            for lane in T.vectorized(4):
                acc[r, lane] = acc[r, lane] + acc[r, lane + 4]
        if bool(lanes >= 4):
            for lane in T.vectorized(2):
                acc[r, lane] = acc[r, lane] + acc[r, lane + 2]
        if bool(lanes >= 2):
            acc[r, 0] = acc[r, 0] + acc[r, 1]

    @T.macro
    def lane_sum3(acc, ii, r):
        if bool(lanes >= 16):
            for lane in T.vectorized(8):
                acc[ii, r, lane] = acc[ii, r, lane] + acc[ii, r, lane + 8]
        if bool(lanes >= 8):
            for lane in T.vectorized(4):
                acc[ii, r, lane] = acc[ii, r, lane] + acc[ii, r, lane + 4]
        if bool(lanes >= 4):
            for lane in T.vectorized(2):
                acc[ii, r, lane] = acc[ii, r, lane] + acc[ii, r, lane + 2]
        if bool(lanes >= 2):
            acc[ii, r, 0] = acc[ii, r, 0] + acc[ii, r, 1]

    # Decode reads each weight once from memory. Task jo computes rows jo, jo + N/R, ...,
    # jo + (R-1) N/R: consecutive tasks walk R far-apart regions row by row, so each thread
    # reads R long sequential streams that the hardware prefetcher follows; R adjacent rows
    # per task would start R short streams per tile (half the bandwidth at K = 896).
    stride, bstride = n // rows, n // nt
    # Each row stream also asks for its weights PREFETCH_BYTES ahead, once per vector:
    # decode GEMVs 5-10% faster with weights from DRAM, a 49,152-row head ~30% (NOTES.md).
    ahead = elements_in(PREFETCH_BYTES, spec.w_dtype)

    @T.macro
    def gemv(X, W, B, Y):
        for jo in T.parallel(stride):
            with T.sblock("gemv"):
                acc = T.sblock_alloc_buffer((rows, lanes), F32, scope="local")
                for r in T.unroll(rows):
                    for lane in T.vectorized(lanes):
                        acc[r, lane] = T.float32(0)
                for ko in range(k_steps):
                    for r in T.unroll(rows):
                        T.evaluate(prefetch(T.address_of(W[r * stride + jo, ko * lanes + ahead])))
                        for lane in T.vectorized(lanes):
                            acc[r, lane] = acc[r, lane] + T.Cast(
                                F32, X[0, ko * lanes + lane]
                            ) * T.Cast(F32, W[r * stride + jo, ko * lanes + lane])
                for r in T.unroll(rows):
                    lane_sum(acc, r)
                    Y[0, r * stride + jo] = epilogue(acc[r, 0], B, r * stride + jo)

    # A few rows (batched decode): each weight vector is widened once and multiplied with
    # up to `nt` rows of x, widened once per call into xf.
    @T.macro
    def gemv_batch(X, W, B, Y, m):
        with T.sblock("gemv_batch"):
            xf = T.sblock_alloc_buffer((GEMV_ROWS, k), F32)
            for i, ko in T.grid(m, k_steps):
                for lane in T.vectorized(lanes):
                    xf[i, ko * lanes + lane] = T.Cast(F32, X[i, ko * lanes + lane])
            for jo in T.parallel(bstride):
                for io in range((m + nt - 1) // nt):
                    with T.sblock("gemv_batch_tile"):
                        acc = T.sblock_alloc_buffer((nt, nt, lanes), F32, scope="local")
                        for ii in T.unroll(nt):
                            for r in T.unroll(nt):
                                for lane in T.vectorized(lanes):
                                    acc[ii, r, lane] = T.float32(0)
                        for ko in range(k_steps):
                            for r in T.unroll(nt):
                                T.evaluate(
                                    prefetch(T.address_of(W[r * bstride + jo, ko * lanes + ahead]))
                                )
                                for ii in T.unroll(nt):
                                    for lane in T.vectorized(lanes):
                                        # Rows past M repeat the last one and are not stored.
                                        acc[ii, r, lane] = acc[ii, r, lane] + xf[
                                            T.min(io * nt + ii, m - 1), ko * lanes + lane
                                        ] * T.Cast(F32, W[r * bstride + jo, ko * lanes + lane])
                        for ii in T.unroll(nt):
                            for r in T.unroll(nt):
                                if io * nt + ii < m:
                                    lane_sum3(acc, ii, r)
                                    Y[io * nt + ii, r * bstride + jo] = epilogue(
                                        acc[ii, r, 0], B, r * bstride + jo
                                    )

    band_tiles = gemm_band_tiles(k, tokens, mr, band, epilogue)

    @T.macro
    def gemm(X, W, B, Y, m):
        with T.sblock("gemm"):
            # x^T in panels of `tokens` rows, zero past M: xt[panel, k, token].
            xt = T.sblock_alloc_buffer(((m + tokens - 1) // tokens, k, tokens), F32)
            for p in T.parallel((m + tokens - 1) // tokens):
                for kk, tok in T.grid(k, tokens):
                    xt[p, kk, tok] = T.if_then_else(
                        p * tokens + tok < m,
                        T.Cast(F32, X[T.min(p * tokens + tok, m - 1), kk]),
                        T.float32(0),
                    )
            for jo in T.parallel(n // band):
                with T.sblock("gemm_band"):
                    wf = T.sblock_alloc_buffer((band, k), F32)
                    for r, ko in T.grid(band, k_steps):
                        for lane in T.vectorized(lanes):
                            wf[r, ko * lanes + lane] = T.Cast(
                                F32, W[jo * band + r, ko * lanes + lane]
                            )
                    band_tiles(wf, xt, B, Y, m, jo)

    xd, wd, od = spec.x_dtype, spec.w_dtype, spec.out_dtype
    if spec.bias_dtype is None:

        @T.prim_func(s_tir=True, private=True)
        def linear(x: T.handle, W: T.Buffer((n, k), wd), y: T.handle):
            T.func_attr({"tirx.noalias": True})
            m = T.int64()
            X = T.match_buffer(x, (m, k), xd)
            Y = T.match_buffer(y, (m, n), od)
            if m == 1:
                gemv(X, W, None, Y)
            elif m <= GEMV_ROWS:
                gemv_batch(X, W, None, Y, m)
            else:
                gemm(X, W, None, Y, m)

    else:
        bd = spec.bias_dtype

        @T.prim_func(s_tir=True, private=True)
        def linear(x: T.handle, W: T.Buffer((n, k), wd), B: T.Buffer((n,), bd), y: T.handle):
            T.func_attr({"tirx.noalias": True})
            m = T.int64()
            X = T.match_buffer(x, (m, k), xd)
            Y = T.match_buffer(y, (m, n), od)
            if m == 1:
                gemv(X, W, B, Y)
            elif m <= GEMV_ROWS:
                gemv_batch(X, W, B, Y, m)
            else:
                gemm(X, W, B, Y, m)

    # Already scheduled: the default CPU rule must leave it alone, and FuseOps must not
    # merge it with neighbours (op pattern 8: opaque).
    return linear.with_attrs({"tirx.is_scheduled": True, "op_pattern": 8})


def emit_linear(
    bb: rx.BlockBuilder,
    x: rx.Expr,
    w: rx.Expr,
    bias: rx.Expr | None,
    vector_bits: int,
) -> rx.Expr | None:
    """call_tir of the kernel for x[..., K] @ w[N, K].T (+ bias) in x's dtype, or None when the
    shapes do not fit it (symbolic N or K), leaving the generic lowering to take over."""
    n, k = w.ty.shape
    if not all(isinstance(d, tirx.IntImm) for d in (n, k)):
        return None
    lead = list(x.ty.shape)[:-1]
    spec = LinearSpec(
        n=int(n),
        k=int(k),
        x_dtype=x.ty.dtype,
        w_dtype=w.ty.dtype,
        out_dtype=x.ty.dtype,
        bias_dtype=None if bias is None else bias.ty.dtype,
    )
    kernel = linear_kernel(spec, tiling(spec, vector_bits))
    suffix = "_bias" if bias is not None else ""
    gv = bb.add_func(kernel, f"linear_{spec.w_dtype}_n{spec.n}_k{spec.k}{suffix}")
    rows = x
    if len(lead) != 1:
        # The kernel sees a matrix: flatten leading dims, restore them after.
        rows = bb.emit(rx.op.reshape(x, [-1, spec.k]))
    m = rows.ty.shape[0]
    args = [rows, w] if bias is None else [rows, w, bias]
    y = bb.emit(rx.call_tir(gv, args, out_ty=rx.TensorType([m, spec.n], spec.out_dtype)))
    if len(lead) != 1:
        y = bb.emit(rx.op.reshape(y, [*lead, spec.n]))
    return y
