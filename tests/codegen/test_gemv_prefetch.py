"""The decode GEMVs' software prefetch (tir_math.PREFETCH_BYTES) reaches the machine code: one
prefetch per row stream of a task (8 rows) at least; the kernels had none before. Their
results are checked elsewhere (test_int4_llvm.py, test_schedule_linear.py); a prefetch
changes none."""

from __future__ import annotations

import re

import pytest
import tvm

from ferrumc.codegen import linear_cpu, tir_math
from ferrumc.codegen.int4_cpu import Int4Spec, int4_kernel, int4_tiling
from ferrumc.codegen.targets import TARGETS

LLVM = TARGETS["llvm"]
PREFETCH = re.compile(r"^\s+prefetcht0\s", re.MULTILINE)
ROWS = 8  # weight rows (streams) per GEMV task at these shapes


def prefetches(func: tvm.tirx.PrimFunc) -> int:
    lib = tvm.tirx.build(func.with_attr("global_symbol", "kernel"), LLVM.tvm_target())
    return len(PREFETCH.findall(lib.inspect_source("asm")))


@pytest.mark.skipif("avx512_vnni" not in LLVM.features, reason="the int8-x GEMV needs VNNI")
@pytest.mark.parametrize("k", [512, 576])  # 576: SmolLM2's rows, the 64-input piece first
def test_int8x_gemv_prefetches_its_rows(k):
    spec = Int4Spec(64, k, 32, "float16", "float16")
    tiles = int4_tiling(spec, 512, int8_activations=True)
    assert tiles.gemv_rows == ROWS and tir_math.PREFETCH_BYTES > 0
    # Each row's packed bytes and its scales.
    assert prefetches(int4_kernel(spec, tiles)) >= 2 * ROWS


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_float_gemv_prefetches_its_rows(dtype):
    spec = linear_cpu.LinearSpec(64, 256, dtype, dtype, dtype)
    tiles = linear_cpu.tiling(spec, 512)
    assert tiles.gemv_rows == ROWS and tir_math.PREFETCH_BYTES > 0
    assert prefetches(linear_cpu.linear_kernel(spec, tiles)) >= ROWS
