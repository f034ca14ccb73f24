"""int4_embedding in the interpreter against an independent dequantize of the gathered rows."""

from __future__ import annotations

import numpy as np
import pytest

from ferrumc.errors import RequestError, VerifyError
from ferrumc.ir import GraphBuilder, ops
from ferrumc.ir.int4 import pack_int4
from ferrumc.ir.interpreter import KERNELS, run_graph
from ferrumc.ir.types import DType, TensorType

RNG = np.random.default_rng(0)
V, C = 11, 64


def int4_table(group: int, has_zeros: bool, scale_dtype=np.float16):
    """Codes [V, C] (unpacked), scales and zeros [V, C/g]."""
    codes = RNG.integers(0, 16, (V, C))
    scales = RNG.uniform(0.01, 0.1, (V, C // group)).astype(scale_dtype)
    zeros = RNG.uniform(0, 15, (V, C // group)).astype(np.float32) if has_zeros else None
    return codes, scales, zeros


def dequantized_rows(codes, scales, zeros, group: int, ids: np.ndarray) -> np.ndarray:
    """Row by row, element by element, in float64: scales[v, c // g] * (code - zero)."""
    out = np.zeros((*ids.shape, C))
    for at in np.ndindex(ids.shape):
        v = ids[at]
        for c in range(C):
            zero = 8.0 if zeros is None else float(zeros[v, c // group])
            out[(*at, c)] = float(scales[v, c // group]) * (int(codes[v, c]) - zero)
    return out


@pytest.mark.parametrize(
    ("group", "has_zeros", "dtype"),
    [(32, False, DType.f32), (16, True, DType.f32), (64, True, DType.f16), (32, False, DType.bf16)],
)
def test_interpreter_gathers_and_dequantizes_the_rows(
    group: int, has_zeros: bool, dtype: DType
) -> None:
    codes, scales, zeros = int4_table(group, has_zeros)
    ids = np.array([[3, 0, 10], [3, 7, 1]], np.int32)
    op = ops.Int4Embedding(group_size=group, has_zeros=has_zeros, dtype=dtype)
    extra = [] if zeros is None else [zeros]
    out = KERNELS[ops.Int4Embedding](op, pack_int4(codes), scales, *extra, ids)
    assert out.shape == (2, 3, C) and out.dtype == dtype.numpy
    want = dequantized_rows(codes, scales, zeros, group, ids)
    # f32: exact products of f32 operands; f16 / bf16: one rounding of the f32 value.
    rtol = {DType.f32: 1e-7, DType.f16: 2**-11, DType.bf16: 2**-8}[dtype]
    np.testing.assert_allclose(out.astype(np.float64), want, rtol=rtol, atol=1e-7)


def test_interpreter_rejects_ids_outside_the_table() -> None:
    codes, scales, _ = int4_table(32, False)
    op = ops.Int4Embedding(group_size=32)
    with pytest.raises(RequestError, match=r"token id 11 outside the vocabulary 0\.\.10"):
        KERNELS[ops.Int4Embedding](op, pack_int4(codes), scales, np.array([11], np.int32))


def test_builder_reports_a_shape_mismatch_with_the_op_and_its_types() -> None:
    b = GraphBuilder("bad")
    tokens = b.input("tokens", TensorType(DType.i32, ("seq",)))
    q = b.weight("q", DType.u4, (V, C))
    with pytest.raises(VerifyError, match=r"int4_embedding\(.*\): scales f16\[11,4\] must be"):
        b.emit(ops.Int4Embedding(group_size=32), q, b.weight("s", DType.f16, (V, 4)), tokens)


def test_a_tied_int4_table_feeds_the_lookup_and_the_head_as_one_weight() -> None:
    """The decoder's tied int4 form: what the lookup returns is what the head multiplies by."""
    b = GraphBuilder("tied")
    tokens = b.input("tokens", TensorType(DType.i32, ("seq",)))
    table = [
        b.weight("embed.qweight", DType.u4, (V, C)),
        b.weight("embed.scales", DType.f16, (V, 2)),
    ]
    x = b.emit(ops.Int4Embedding(group_size=32), *table, tokens)
    logits = b.emit(ops.Int4Linear(group_size=32), x, *table)
    graph = b.build({"logits": logits})  # type: ignore[dict-item]
    assert len(graph.weights) == 2
    codes, scales, _ = int4_table(32, False)
    weights = {"embed.qweight": pack_int4(codes), "embed.scales": scales}
    ids = np.arange(V, dtype=np.int32)
    got = run_graph(graph, {"tokens": ids}, weights)["logits"]
    rows = dequantized_rows(codes, scales, None, 32, ids)  # the whole table, in id order
    np.testing.assert_allclose(got, rows @ rows.T, rtol=1e-5, atol=1e-4)
