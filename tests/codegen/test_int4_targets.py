"""One graph of int4 linears (symmetric, asymmetric with bias, act-order perm) through the whole
lowering: run on llvm against the numpy interpreter, and compiled for cuda and metal with
dlight's GPU rules (no GPU here: the check is that every kernel is scheduled and yields source).
"""

from __future__ import annotations

import re
import time

import numpy as np
import pytest

from ferrumc.codegen.build import build, compile_lowered
from ferrumc.codegen.lower import lower_module
from ferrumc.codegen.targets import TARGETS
from ferrumc.ir import DType, GraphBuilder, Module, TensorType, ops
from ferrumc.ir.int4 import pack_int4
from ferrumc.ir.interpreter import run_graph
from ferrumc.runtime.library import Library

K = 256
# (name, op, N): every path of the CPU kernel's inputs, and the GPU TE kernel's.
LINEARS = [
    ("sym_g32", ops.Int4Linear(group_size=32), 64),
    ("asym_g128_bias", ops.Int4Linear(group_size=128, has_zeros=True, has_bias=True), 32),
    ("perm_g64", ops.Int4Linear(group_size=64, has_perm=True), 48),
]


def _module() -> Module:
    b = GraphBuilder("int4")
    x = b.input("x", TensorType(DType.f16, ("seq", K)))
    outs = {}
    for name, op, n in LINEARS:
        ins = [x, b.weight(f"{name}.q", DType.u4, (n, K))]
        ins.append(b.weight(f"{name}.scales", DType.f16, (n, K // op.group_size)))
        if op.has_zeros:
            ins.append(b.weight(f"{name}.zeros", DType.f16, (n, K // op.group_size)))
        if op.has_perm:
            ins.append(b.weight(f"{name}.perm", DType.i32, (K,)))
        if op.has_bias:
            ins.append(b.weight(f"{name}.bias", DType.f16, (n,)))
        outs[name] = b.emit(op, *ins)
    return Module({"int4": b.build(outs)})


def _weights(module: Module) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(5)
    out = {}
    for name, t in module.weight_types().items():
        if t.dtype is DType.u4:
            out[name] = pack_int4(rng.integers(0, 16, t.shape))
        elif name.endswith(".perm"):
            out[name] = rng.permutation(K).astype(np.int32)
        elif name.endswith(".zeros"):
            out[name] = rng.integers(0, 16, t.shape).astype(np.float16)
        elif name.endswith(".scales"):
            out[name] = (rng.uniform(0.5, 2, t.shape) / 16).astype(np.float16)
        else:
            out[name] = rng.standard_normal(t.shape).astype(np.float16)
    return out


@pytest.fixture(scope="module")
def llvm(tmp_path_factory) -> tuple[Module, dict[str, np.ndarray], Library]:
    module = _module()
    weights = _weights(module)
    built = build(module, TARGETS["llvm"], tmp_path_factory.mktemp("int4"))
    return module, weights, Library(built.library, weights)


@pytest.mark.parametrize("seq", [1, 3, 20])
def test_llvm_matches_the_interpreter(llvm, seq):
    module, weights, lib = llvm
    x = np.random.default_rng(seq).standard_normal((seq, K)).astype(np.float16)
    got = lib.run("int4", {"x": x})
    want = run_graph(module.graphs["int4"], {"x": x}, weights)
    for name, _, _ in LINEARS:
        scale = np.abs(want[name].astype(np.float64)).max()
        diff = np.abs(got[name].astype(np.float64) - want[name].astype(np.float64)).max()
        assert diff <= 2e-3 * scale, f"{name}, seq {seq}: max abs diff {diff}"


def _device_sources(module: object) -> list[str]:
    """Source of every GPU module in the executable's import tree (VM -> host llvm -> device)."""
    own = [module.inspect_source()] if module.kind in ("cuda", "metal") else []  # type: ignore[attr-defined]
    return own + [s for m in module.imports for s in _device_sources(m)]  # type: ignore[attr-defined]


@pytest.mark.parametrize(("target", "marker"), [("cuda", "__global__"), ("metal", "kernel void")])
def test_gpu_targets_schedule_and_emit_source(target, marker):
    """Every kernel gets threads bound (the build fails otherwise) in about a second: Metal's
    simdgroup attempt, two minutes per int4 kernel, is skipped (codegen/schedule_gpu.py)."""
    lowered = lower_module(_module(), TARGETS[target])
    start = time.perf_counter()
    executable = compile_lowered(lowered, TARGETS[target])
    assert time.perf_counter() - start < 60
    (source,) = _device_sources(executable.mod)
    kernels = {
        m.group(1)
        for line in source.splitlines()
        if marker in line
        for m in [re.search(r"(int4_linear\w*_kernel)\(", line)]
        if m
    }
    assert len(kernels) == len(LINEARS), kernels
