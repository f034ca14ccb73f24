"""The hand-written CPU linear kernel (codegen/linear_cpu.py) against numpy.

Each kernel holds a GEMV path (one row), a batched GEMV path (up to GEMV_ROWS rows) and a GEMM
path, picked at run time, so row counts on every side of the switches and partial GEMM token
panels are checked, for f32, f16
and bf16, with and without bias, and for shapes whose tiles fall back to smaller sizes.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
import tvm

from ferrumc.codegen.linear_cpu import GEMV_ROWS, LinearSpec, Tiling, linear_kernel, tiling
from ferrumc.codegen.targets import TARGETS

NUMPY = {"float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16}
# Output rounding is one ulp of the output dtype; accumulation order differs from numpy's.
RTOL = {"float32": 1e-5, "float16": 1e-3, "bfloat16": 8e-3}
ROWS = [1, 3, GEMV_ROWS, GEMV_ROWS + 1, 2 * GEMV_ROWS + 3]


def _build(spec: LinearSpec) -> tvm.runtime.Module:
    kernel = linear_kernel(spec, tiling(spec)).with_attr("global_symbol", "linear")
    return tvm.tirx.build(kernel, target=TARGETS["llvm"].tvm_target())


@pytest.mark.parametrize(
    ("n", "k", "dtype", "bias"),
    [
        (24, 64, "float32", True),
        (40, 48, "float16", True),
        (32, 32, "bfloat16", False),
        (10, 12, "float32", False),  # N and K not multiples of the preferred tiles
    ],
)
def test_kernel_matches_numpy(n, k, dtype, bias):
    spec = LinearSpec(n, k, dtype, dtype, dtype, dtype if bias else None)
    lib = _build(spec)
    rng = np.random.default_rng(0)
    cpu = tvm.cpu()
    w = rng.standard_normal((n, k)).astype(NUMPY[dtype])
    b = rng.standard_normal(n).astype(NUMPY[dtype])
    for m in ROWS:
        x = rng.standard_normal((m, k)).astype(NUMPY[dtype])
        y = tvm.runtime.tensor(np.zeros((m, n), NUMPY[dtype]), cpu)
        args = [tvm.runtime.tensor(x, cpu), tvm.runtime.tensor(w, cpu)]
        args += [tvm.runtime.tensor(b, cpu)] if bias else []
        lib(*args, y)
        want = x.astype(np.float64) @ w.astype(np.float64).T + (b.astype(np.float64) if bias else 0)
        got = y.numpy().astype(np.float64)
        tol = RTOL[dtype] * np.abs(want).max() + 1e-6
        assert np.abs(got - want).max() <= tol, f"m={m}"


def test_tiles_divide_the_shape():
    qwen_mlp = tiling(LinearSpec(9728, 896, "float16", "float16", "float16"))
    assert qwen_mlp == Tiling(lanes=16, gemv_rows=8, n_tile=4, gemm_rows=8, tokens=32, band=128)
    # A long K narrows the band, so that its f32 copy stays in L2.
    assert tiling(LinearSpec(896, 4864, "float16", "float16", "float16")).band == 16
    odd = tiling(LinearSpec(10, 12, "float32", "float32", "float32"))
    assert (odd.lanes, odd.gemv_rows, odd.n_tile, odd.gemm_rows, odd.band) == (4, 2, 2, 2, 2)
    avx2 = tiling(LinearSpec(16, 64, "float32", "float32", "float32"), vector_bits=256)
    assert (avx2.lanes, avx2.tokens) == (8, 16)


def test_kernels_are_cached_and_marked_scheduled():
    spec = LinearSpec(24, 64, "float32", "float32", "float32")
    kernel = linear_kernel(spec, tiling(spec))
    assert linear_kernel(spec, tiling(spec)) is kernel
    assert kernel.attrs["tirx.is_scheduled"]
