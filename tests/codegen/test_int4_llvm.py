"""The fused int4 CPU kernel (codegen/int4_cpu.py) against numpy dequantize-then-matmul.

Each kernel holds a GEMV path (one row), a batched GEMV path and a GEMM path picked at run
time, so every case runs rows on each side of the switches (1, 3, 8, 17, 64) and partial GEMM
panels. Cases cover symmetric and asymmetric zero points, groups of 32, 64 and 128, bias,
act-order perm, f32 and f16 x, f16 and f32 scales, the convert + FMA path of CPUs without
AVX-512 (chosen here by asking for 256-bit vectors), and the SwiGLU epilogue.
"""

from __future__ import annotations

import re

import ml_dtypes
import numpy as np
import pytest
import tvm

from ferrumc.codegen.int4_cpu import Int4Spec, int4_kernel, int4_tiling
from ferrumc.codegen.int4_int8x_cpu import int8x_reference
from ferrumc.codegen.targets import TARGETS
from ferrumc.ir.int4 import pack_int4

ROWS = [1, 2, 3, 6, 8, 17, 64]
# Output rounding is one ulp of x's dtype; f32 accumulation order differs from numpy's.
RTOL = {"float32": 2e-6, "float16": 1e-3, "bfloat16": 8e-3}
INT8_X_RTOL = 1.5e-2
NUMPY = {"float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16}


def _build(spec: Int4Spec, vector_bits: int, int8_activations: bool = False) -> tvm.runtime.Module:
    tiles = int4_tiling(spec, vector_bits, int8_activations)
    kernel = int4_kernel(spec, tiles).with_attr("global_symbol", "int4")
    return tvm.tirx.build(kernel, target=TARGETS["llvm"].tvm_target())


@pytest.mark.parametrize(
    ("spec", "vector_bits", "int8_activations"),
    [
        (Int4Spec(48, 256, 32, "float32", "float16", bias_dtype="float32"), 512, False),
        (Int4Spec(40, 256, 64, "float16", "float16", zero_dtype="float16"), 512, False),
        (Int4Spec(24, 384, 128, "float32", "float32", "float32", "float32", True), 512, False),
        (Int4Spec(16, 128, 32, "float16", "float16", zero_dtype="float16"), 256, False),
        (Int4Spec(32, 128, 32, "bfloat16", "bfloat16", bias_dtype="bfloat16"), 512, False),
        (Int4Spec(64, 384, 32, "float16", "float16", None, "float16", True), 512, True),
        (Int4Spec(40, 576, 64, "float32", "float16", "float32"), 512, True),
        (Int4Spec(24, 320, 32, "float16", "float16", "float16", "float32"), 512, True),
        (Int4Spec(16, 512, 128, "float32", "float32", None, None, True), 512, True),
        # K % 128 == 64 with even strides: odd rows take their 64-input piece first.
        (Int4Spec(256, 576, 32, "float16", "float16"), 512, True),
        (Int4Spec(512, 320, 64, "float32", "float16", "float16", "float32", True), 512, True),
        # The SwiGLU epilogue: silu(first half) * second half, in the int8-x paths and the GEMM.
        (Int4Spec(64, 384, 32, "float16", "float16", None, "float16", True, True), 512, True),
        (Int4Spec(40, 576, 64, "float32", "float16", "float32", swiglu=True), 512, True),
        (Int4Spec(512, 576, 32, "float32", "float16", swiglu=True), 512, True),
    ],
    ids=[
        "sym-g32-bias",
        "asym-g64-f16",
        "asym-g128-bias-perm",
        "avx2-asym-g32",
        "bf16-bias",
        "int8x-g32-bias-perm",
        "int8x-asym-g64-k576",
        "int8x-asym-g32-bias-k320",
        "int8x-g128-perm",
        "int8x-k576-piece-first",
        "int8x-asym-g64-bias-perm-k320-piece-first",
        "swiglu-g32-bias-perm",
        "swiglu-asym-g64-k576",
        "swiglu-k576-piece-first",
    ],
)
def test_kernel_matches_numpy_dequantize_then_matmul(
    spec: Int4Spec, vector_bits: int, int8_activations: bool
):
    n, k, g = spec.n, spec.k, spec.group_size
    lib = _build(spec, vector_bits, int8_activations)
    rng = np.random.default_rng(0)
    cpu = tvm.cpu()
    q = rng.integers(0, 16, (n, k))
    scales = (rng.uniform(0.5, 2.0, (n, k // g)) / 16).astype(NUMPY[spec.scale_dtype])
    inputs = [pack_int4(q), scales]
    zero = np.float32(8)
    if spec.zero_dtype:
        # Integer zero points, as GPTQ and AWQ store; the int8-x cases take Q4_1's float ones.
        zeros = rng.integers(0, 16, (n, k // g)).astype(NUMPY[spec.zero_dtype])
        if int8_activations:
            zeros = rng.uniform(0, 15, (n, k // g)).astype(NUMPY[spec.zero_dtype])
        inputs.append(zeros)
        zero = np.repeat(zeros.astype(np.float32), g, axis=1)
    perm = rng.permutation(k).astype(np.int32)
    inputs += [perm] if spec.has_perm else []
    bias = rng.standard_normal(n).astype(NUMPY[spec.bias_dtype or "float32"])
    inputs += [bias] if spec.bias_dtype else []
    # The reference: w dequantized in f32, then a float64 matmul.
    w = np.repeat(scales.astype(np.float32), g, axis=1) * (q.astype(np.float32) - zero)
    out = n // 2 if spec.swiglu else n
    for m in ROWS:
        x = rng.standard_normal((m, k)).astype(NUMPY[spec.x_dtype])
        y = tvm.runtime.tensor(np.zeros((m, out), NUMPY[spec.x_dtype]), cpu)
        lib(*(tvm.runtime.tensor(a, cpu) for a in (x, *inputs)), y)
        xs = x[:, perm] if spec.has_perm else x
        want = xs.astype(np.float64) @ w.astype(np.float64).T
        want = _epilogue(spec, want + (bias.astype(np.float64) if spec.bias_dtype else 0))
        got = y.numpy().astype(np.float64)
        if int8_activations:
            # Decode and prefill round x to int8 per block of 32: near the exact product, and
            # equal (up to f32 summation order and output rounding) to that rounding in numpy.
            tol = INT8_X_RTOL * np.abs(want).max()
            assert np.abs(got - want).max() <= tol, f"{np.abs(got - want).max()} > {tol}"
            zeros_ = inputs[2] if spec.zero_dtype else np.float32(8)
            want = np.stack([int8x_reference(row, q, scales, zeros_, g) for row in xs])
            want = _epilogue(spec, want + (bias.astype(np.float64) if spec.bias_dtype else 0))
        tol = RTOL[spec.x_dtype] * np.abs(want).max() + 1e-6
        assert np.abs(got - want).max() <= tol, f"m={m}: {np.abs(got - want).max()} > {tol}"


def _epilogue(spec: Int4Spec, y: np.ndarray) -> np.ndarray:
    """With swiglu, silu(gate) * up of the rows' sums y (gate rows first), in float64."""
    if not spec.swiglu:
        return y
    gate, up = np.split(y, 2, axis=-1)
    return gate / (1 + np.exp(-gate)) * up


def test_tiles_pick_the_lookup_only_with_16_lanes():
    spec = Int4Spec(9728, 896, 32, "float16", "float16")
    wide, avx2 = int4_tiling(spec, 512), int4_tiling(spec, 256)
    assert wide.lookup and wide.lanes == 16 and wide.gemv_rows == 8 and wide.band == 128
    assert not avx2.lookup and avx2.lanes == 8 and avx2.tokens == 16


def test_decode_loop_uses_vpermps_and_fma():
    """The GEMV's inner loop is vectorized: zmm table lookups and FMAs."""
    spec = Int4Spec(64, 256, 64, "float32", "float16")
    asm = _build(spec, 512).inspect_source("asm")
    assert re.search(r"vperm[dps]+\t%zmm", asm) and "vfmadd231ps\t%zmm" in asm
    assert "vpdpbusd" not in asm
    # With int8 activations: VNNI dot products; a K % 128 = 64 tail takes ymm ones.
    assert "vpdpbusd\t%zmm" in _build(spec, 512, int8_activations=True).inspect_source("asm")
    tail = Int4Spec(64, 320, 64, "float32", "float16", "float16")
    asm = _build(tail, 512, int8_activations=True).inspect_source("asm")
    assert "vpdpbusd\t%zmm" in asm and "vpdpbusd\t%ymm" in asm
