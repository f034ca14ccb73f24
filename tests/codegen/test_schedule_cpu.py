"""The llvm schedule for kernels without one (codegen/schedule_cpu.py): serial below
SERIAL_POINTS, parallel above, decided at build time for static shapes and at run time for
dynamic ones; results against numpy on both sides of the switch."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import relax as rx
from tvm import te, tirx
from tvm.script import tirx as T

from ferrumc.codegen import te_kernels
from ferrumc.codegen.schedule_cpu import (
    SERIAL_BELOW,
    SERIAL_POINTS,
    cpu_schedule_pass,
    serial_when_small,
)
from ferrumc.codegen.targets import TARGETS

LLVM = TARGETS["llvm"]
HIDDEN = 64


def _scheduled(func: tirx.PrimFunc) -> tirx.PrimFunc:
    with LLVM.tvm_target():
        return cpu_schedule_pass()(tvm.IRModule({"main": func}))["main"]


def _rms_norm(rows: int | tirx.Var) -> tirx.PrimFunc:
    x = te.placeholder((rows, HIDDEN), "float32", name="x")
    w = te.placeholder((HIDDEN,), "float32", name="w")
    return te.create_prim_func([x, w, te_kernels.rms_norm(x, w, 1e-5)])


def _add(n: int) -> tirx.PrimFunc:
    a = te.placeholder((n,), "float32", name="a")
    b = te.placeholder((n,), "float32", name="b")
    return te.create_prim_func([a, b, te.compute((n,), lambda i: a[i] + b[i], name="c")])


def test_dynamic_rows_switch_at_run_time_and_match_numpy():
    func = _scheduled(_rms_norm(tirx.Var("n", "int64")))
    script = func.script()
    # Both nests (sum of squares, then scaling) carry a serial and a parallel form.
    assert script.count(f"< T.int64({SERIAL_POINTS})") == 2
    assert script.count("T.parallel(") == 2
    lib = tvm.tirx.build(func.with_attr("global_symbol", "main"), target=LLVM.tvm_target())
    cpu = tvm.cpu()
    rng = np.random.default_rng(0)
    w = rng.standard_normal(HIDDEN).astype(np.float32)
    serial_rows = (SERIAL_POINTS - 1) // HIDDEN
    for rows in (1, serial_rows, serial_rows + 1, 4 * serial_rows):
        x = rng.standard_normal((rows, HIDDEN)).astype(np.float32)
        out = tvm.runtime.empty((rows, HIDDEN), "float32", cpu)
        lib(tvm.runtime.tensor(x, cpu), tvm.runtime.tensor(w, cpu), out)
        want = w * x / np.sqrt((x.astype(np.float64) ** 2).mean(-1, keepdims=True) + 1e-5)
        np.testing.assert_allclose(out.numpy(), want, rtol=1e-5, atol=1e-6, err_msg=f"{rows=}")


@pytest.mark.parametrize(
    ("n", "parallel"), [(SERIAL_POINTS // 2, False), (4 * SERIAL_POINTS, True)]
)
def test_static_shapes_are_decided_at_build_time(n, parallel):
    script = _scheduled(_add(n)).script()
    assert "if " not in script
    assert ("T.parallel(" in script) == parallel


def test_reshape_keeps_the_form_that_becomes_a_view():
    """RewriteDataflowReshape turns a reshape's copy kernel into a free view only if the kernel
    has the plain reshape form: the switch must leave it alone."""
    n = tirx.Var("n", "int64")
    x = te.placeholder((n, HIDDEN), "float32", name="x")
    func = te.create_prim_func([x, tvm.topi.reshape(x, (n * HIDDEN,))])
    assert rx.analysis.has_reshape_pattern(func)
    scheduled = _scheduled(func)
    assert rx.analysis.has_reshape_pattern(scheduled)
    assert "T.parallel(" in scheduled.script()
    assert "if " not in scheduled.script()


def test_work_counted_by_inner_loop_variables_leaves_the_loop_parallel():
    """A nest whose inner extent an outer loop sets (triangular) has no count that can be
    tested before the loop: it stays parallel, with no dangling variable in a condition."""

    @T.prim_func(s_tir=True)
    def triangle(a: T.handle, b: T.handle):
        n = T.int64()
        A = T.match_buffer(a, (n, n), "float32")
        B = T.match_buffer(b, (n,), "float32")
        with T.sblock("root"):
            for i in T.parallel(n, annotations={SERIAL_BELOW: SERIAL_POINTS}):
                B[i] = T.float32(0)
                for j in range(i + 1):
                    B[i] = B[i] + A[i, j]

    out = serial_when_small(tvm.IRModule({"main": triangle}))["main"]
    script = out.script()
    assert "T.parallel(" in script and "if " not in script
    assert SERIAL_BELOW not in script
    lib = tvm.tirx.build(out.with_attr("global_symbol", "main"), target=LLVM.tvm_target())
    a = np.arange(25, dtype=np.float32).reshape(5, 5)
    b = tvm.runtime.empty((5,), "float32", tvm.cpu())
    lib(tvm.runtime.tensor(a), b)
    np.testing.assert_allclose(b.numpy(), np.tril(a).sum(axis=1))
