"""The int4_embedding kernel (te_kernels.int4_embedding) on llvm against the interpreter, from one
graph compiled once: symmetric and asymmetric tables, f16 and f32 scales, f32 / f16 / bf16
outputs, ids of any rank; and compiled for cuda and metal with dlight's rules (no GPU here)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from ferrumc.codegen.build import build, compile_lowered
from ferrumc.codegen.lower import lower_module
from ferrumc.codegen.targets import TARGETS
from ferrumc.ir import DType, GraphBuilder, Module, TensorType, ops
from ferrumc.ir.int4 import pack_int4
from ferrumc.ir.interpreter import run_graph
from ferrumc.runtime.library import Library

V, C = 40, 96
CASES = {
    # name: (group size, zeros, scales' dtype, output dtype)
    "sym_g32_f32": (32, False, DType.f16, DType.f32),
    "asym_g16_f32": (16, True, DType.f32, DType.f32),
    "asym_g32_f16": (32, True, DType.f16, DType.f16),
    "sym_g96_bf16": (96, False, DType.f16, DType.bf16),
}


def _graph() -> Module:
    b = GraphBuilder("lookup")
    tokens = b.input("tokens", TensorType(DType.i32, ("seq",)))
    pairs = b.input("pairs", TensorType(DType.i32, (2, 3)))
    q = b.weight("q", DType.u4, (V, C))

    def lookup(name: str, ids, group: int, has_zeros: bool, scale_dtype: DType, dtype: DType):
        groups = (V, C // group)
        table = [q, b.weight(f"{name}.scales", scale_dtype, groups)]
        if has_zeros:
            table.append(b.weight(f"{name}.zeros", DType.f32, groups))
        op = ops.Int4Embedding(group_size=group, has_zeros=has_zeros, dtype=dtype)
        return b.emit(op, *table, ids)

    outs = {name: lookup(name, tokens, *case) for name, case in CASES.items()}
    outs["ids_2d"] = lookup("asym_g32_f16", pairs, *CASES["asym_g32_f16"])
    return Module({"lookup": b.build(outs)})  # type: ignore[arg-type]


def _weights(module: Module) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(5)
    out = {}
    for name, t in module.weight_types().items():
        if t.dtype is DType.u4:
            out[name] = pack_int4(rng.integers(0, 16, t.shape))
        elif name.endswith("scales"):
            out[name] = rng.uniform(0.01, 0.2, t.shape).astype(t.dtype.numpy)
        else:
            out[name] = rng.uniform(0, 15, t.shape).astype(t.dtype.numpy)
    return out


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    module = _graph()
    weights = _weights(module)
    built = build(module, TARGETS["llvm"], tmp_path_factory.mktemp("int4_embedding"))
    library = Library(built.library, weights)
    runs = []
    for seq in (1, 7, 64):  # decode, a short and a longer prefill
        inputs = {
            "tokens": np.random.default_rng(seq).integers(0, V, seq).astype(np.int32),
            "pairs": np.array([[0, V - 1, 3], [3, 3, 17]], np.int32),
        }
        runs.append(
            (library.run("lookup", inputs), run_graph(module.graphs["lookup"], inputs, weights))
        )
    return runs


@pytest.mark.parametrize("name", [*CASES, "ids_2d"])
def test_kernel_matches_the_interpreter(results, name):
    for got, want in results:
        assert got[name].dtype == want[name].dtype and got[name].shape == want[name].shape
        # The same f32 expression, rounded once to the output dtype: bit for bit.
        np.testing.assert_array_equal(got[name], want[name])


@pytest.mark.parametrize(("target", "marker"), [("cuda", "__global__"), ("metal", "kernel void")])
def test_gpu_targets_schedule_and_emit_source(target, marker):
    executable = compile_lowered(lower_module(_graph(), TARGETS[target]), TARGETS[target])
    sources = _device_sources(executable.mod)
    kernels = [line for s in sources for line in s.splitlines() if marker in line]
    assert any(re.search(r"int4_embedding\w*_kernel\(", line) for line in kernels), kernels


def _device_sources(module: object) -> list[str]:
    """Source of every GPU module in the executable's import tree (VM -> host llvm -> device)."""
    own = [module.inspect_source()] if module.kind in ("cuda", "metal") else []  # type: ignore[attr-defined]
    return own + [s for m in module.imports for s in _device_sources(m)]  # type: ignore[attr-defined]
