"""Elementary functions as TIR expressions for our CPU kernels: polynomials that vectorize,
where TIR's exp on llvm is a libm call per element (and each call also clears the vector
registers' upper halves); and a cache-line prefetch."""

from __future__ import annotations

import math

import tvm
from tvm import tirx
from tvm.script import tirx as T

LOG2E = math.log2(math.e)
# 2^f on [-0.5, 0.5]: Cephes' exp2f polynomial (relative error below 2e-7, against 6e-8
# for libm's correctly rounded-ish exp2f), highest power first.
_EXP2_POLY = (
    1.535336188319500e-4,
    1.339887440266574e-3,
    9.618437357674640e-3,
    5.550332471162809e-2,
    2.402264791363012e-1,
    6.931472028550421e-1,
    1.0,
)


def exp2(x: tirx.PrimExpr, lanes: int = 1) -> tirx.PrimExpr:
    """2^x for x <= 0 (0 below -126), as `lanes` f32 lanes (1: a scalar, which T.vectorized
    loops vectorize). 2^x = 2^n * 2^f with n = round(x), the power of two put together in the
    float's exponent bits."""
    f32, i32 = ("float32", "int32") if lanes == 1 else (f"float32x{lanes}", f"int32x{lanes}")

    def const(value: float | int, dtype: str = "float32") -> tirx.PrimExpr:
        scalar = tirx.const(value, dtype)
        return scalar if lanes == 1 else T.Broadcast(scalar, lanes)

    xv = tirx.Var("x", f32)
    nv = tirx.Var("n", f32)
    fv = tirx.Var("f", f32)
    poly = const(_EXP2_POLY[0])
    for coef in _EXP2_POLY[1:]:
        poly = poly * fv + const(coef)
    bits = T.shift_left(T.Cast(i32, nv) + const(127, "int32"), const(23, "int32"))
    value = poly * T.reinterpret(f32, bits)
    clamped = T.max(xv, const(-126.0))
    body = tirx.Let(nv, T.floor(clamped + const(0.5)), tirx.Let(fv, clamped - nv, value))
    return tirx.Let(xv, x, T.Select(xv < const(-126.0), const(0.0), body))


def silu(x: tirx.PrimExpr) -> tirx.PrimExpr:
    """x * sigmoid(x) for one f32 x, through e^-|x| <= 1 (no overflow on either side)."""
    xv = tirx.Var("x", "float32")
    tv = tirx.Var("t", "float32")
    one = tirx.const(1.0, "float32")
    sigmoid = T.Select(xv >= tirx.const(0.0, "float32"), one, tv) / (one + tv)
    body = tirx.Let(tv, exp2(-T.fabs(xv) * tirx.const(LOG2E, "float32")), xv * sigmoid)
    return tirx.Let(xv, x, body)


# How far ahead a decode GEMV's row stream prefetches its weights (int4_int8x_cpu.py,
# linear_cpu.py): 256-1024 bytes timed within a few percent of each other, and no prefetch
# 5-17% slower (codegen/NOTES.md).
PREFETCH_BYTES = 512


def elements_in(nbytes: int, dtype: str) -> int:
    """How many `dtype` elements `nbytes` bytes hold: a prefetch distance as an index offset."""
    return nbytes * 8 // tvm.DataType(dtype).bits


def prefetch(address: tirx.PrimExpr) -> tirx.PrimExpr:
    """Fetch the cache line at `address` into all cache levels: a read hint that never faults,
    so an address past the end of a buffer is harmless."""
    return T.call_llvm_intrin("void", "llvm.prefetch.p0", address, 0, 3, 1)
