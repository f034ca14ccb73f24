"""build.mark_no_alias: every CPU kernel declares `tirx.noalias`, so that LLVM keeps the prefill
GEMM's accumulators in registers instead of storing them after each input."""

from __future__ import annotations

import re

import tvm

from ferrumc.codegen.build import relax_pipeline
from ferrumc.codegen.lower import lower_module
from ferrumc.codegen.targets import TARGETS
from ferrumc.tests.codegen.tiny_paged import tiny_paged_module

LLVM = TARGETS["llvm"]
LABEL = re.compile(r"^(\.LBB\w+):")
BACK_JUMP = re.compile(r"^\s+j\w+\s+(\.LBB\w+)")
ZMM_STORE = re.compile(r"^\s+vmov\w+\s+%zmm\d+, .*\(")


def outer_product_loops(asm: str) -> list[tuple[int, int]]:
    """(FMAs, zmm stores) of each innermost loop shaped like the GEMM micro-kernel: one basic
    block that jumps back to its own label, with >= 8 broadcasts and >= 16 FMAs."""
    lines = asm.split("\n")
    label_at: dict[str, int] = {}
    loops = []
    for i, line in enumerate(lines):
        if m := LABEL.match(line):
            label_at[m.group(1)] = i
        m = BACK_JUMP.match(line)
        if not m or m.group(1) not in label_at:
            continue
        body = lines[label_at[m.group(1)] + 1 : i]
        if any(LABEL.match(b) for b in body):
            continue
        fmas = sum("vfmadd231ps" in b for b in body)
        if fmas >= 16 and sum("vbroadcastss" in b for b in body) >= 8:
            loops.append((fmas, sum(bool(ZMM_STORE.match(b)) for b in body)))
    return loops


def test_every_cpu_kernel_declares_no_alias():
    with LLVM.tvm_target():
        mod = relax_pipeline(LLVM)(lower_module(tiny_paged_module(), LLVM).mod)
    funcs = {gv.name_hint: f for gv, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc)}
    # TVM's KV-cache kernels and the VM's shape functions come without it.
    assert {"batch_prefill_ragged_kv", "shape_func"} <= set(funcs)
    assert [name for name, f in funcs.items() if not f.attrs.get("tirx.noalias")] == []


def test_gemm_accumulators_stay_in_registers():
    """The tiny model's prefill GEMMs (8 weight rows x 32 tokens, 16 zmm accumulators): before
    mark_no_alias each of their inner loops stored all 16 accumulators on every input."""
    with LLVM.tvm_target():
        ex = tvm.compile(
            lower_module(tiny_paged_module(), LLVM).mod,
            target=LLVM.tvm_target(),
            relax_pipeline=relax_pipeline(LLVM),
        )
    loops = outer_product_loops(ex.mod.imports[0].inspect_source("asm"))
    assert loops, "no GEMM micro-kernel loop found in the library's assembly"
    assert all(stores == 0 for _, stores in loops), loops
