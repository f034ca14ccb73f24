"""ferrumc's CPU attention kernels (codegen/attention_cpu.py) against the TVM kernels they replace.

Same inputs, same outputs: the attention output (to the output dtype's rounding) and the
base-2 log-sum-exp that TVM's merge kernel reads, for paged decode over ragged page lists and
ragged prefill with and without the causal mask, including more keys than queries, and
prefill against keys already in pages (a prompt's later chunk).
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
import tvm
from tvm.relax.frontend.nn.llm._decode_kernels import _attention_decode_cpu
from tvm.relax.frontend.nn.llm._prefill_kernels import (
    _attention_prefill_cpu,
    _attention_prefill_ragged_cpu,
)

from ferrumc.codegen.attention_cpu import (
    decode_kernel,
    paged_prefill_kernel,
    ragged_prefill_kernel,
    replacement,
)
from ferrumc.codegen.targets import TARGETS

PAGE = 16
SCALE = 0.25
NUMPY = {"float16": np.float16, "bfloat16": ml_dtypes.bfloat16}
# bf16 vectors are widened by their bits (attention_decode_cpu.widen): both dtypes are checked.
DTYPES = pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
ATOL = {"float16": 2e-3, "bfloat16": 1.6e-2}  # about two output roundings at |o| ~ 1


def _build(func: tvm.tirx.PrimFunc) -> tvm.runtime.Module:
    return tvm.tirx.build(func, target=TARGETS["llvm"].tvm_target())


def _run(lib, arrays: list[np.ndarray], scalars: list[object], out_shapes) -> list[np.ndarray]:
    """Call with the input arrays, then the outputs (output, lse), then the scalar arguments."""
    cpu = tvm.cpu()
    outs = [tvm.runtime.tensor(np.zeros(s, d), cpu) for s, d in out_shapes]
    lib(*[tvm.runtime.tensor(a, cpu) for a in arrays], *outs, *scalars)
    return [o.numpy().astype(np.float32) for o in outs]


@DTYPES
@pytest.mark.parametrize(("h_kv", "h_q", "d"), [(2, 4, 16), (1, 3, 8)])
def test_decode_matches_tvm(h_kv, h_q, d, dtype):
    rng = np.random.default_rng(0)
    pages = rng.standard_normal((9, 2, h_kv, PAGE, d)).astype(NUMPY[dtype])
    seq_pages, last = [[3, 7, 1], [0], [5, 6]], [5, 16, 1]
    indptr = np.cumsum([0] + [len(p) for p in seq_pages]).astype(np.int32)
    values = np.array([p for pages_of_seq in seq_pages for p in pages_of_seq], np.int32)
    b = len(seq_pages)
    q = rng.standard_normal((b, h_q, d)).astype(NUMPY[dtype])
    zeros = np.zeros(b, np.int32)
    inputs = [q, pages, indptr, values, np.array(last, np.int32), zeros, zeros]
    scalars = [0, 1.0, 10000.0, SCALE]  # rotary_mode, rope_scale, rope_theta, sm_scale
    shapes = [((b, h_q, d), NUMPY[dtype]), ((b, h_q), "float32")]
    ref = _attention_decode_cpu(h_kv, h_q, d, dtype, False, {})
    want = _run(_build(ref), inputs, scalars, shapes)
    got = _run(_build(decode_kernel(h_kv, h_q, d, dtype)), inputs, scalars, shapes)
    np.testing.assert_allclose(got[0], want[0], atol=ATOL[dtype])
    np.testing.assert_allclose(got[1], want[1], atol=1e-5)


@DTYPES
@pytest.mark.parametrize(
    ("q_lens", "kv_lens", "causal", "heads"),
    [
        ([5, 37], [5, 37], 1, (2, 4, 16)),
        ([3, 9], [7, 20], 1, (2, 4, 16)),
        ([4, 6], [4, 6], 0, (2, 4, 16)),
        # SmolLM2's heads: 3 KV heads of 64 (4 vectors a row), 3 query heads each.
        ([21, 40], [21, 48], 1, (3, 9, 64)),
    ],
)
def test_ragged_prefill_matches_tvm(q_lens, kv_lens, causal, heads, dtype):
    h_kv, h_q, d = heads
    rng = np.random.default_rng(1)
    q_indptr = np.cumsum([0, *q_lens]).astype(np.int32)
    kv_indptr = np.cumsum([0, *kv_lens]).astype(np.int32)
    total_q, total_kv = int(q_indptr[-1]), int(kv_indptr[-1])
    q = rng.standard_normal((total_q, h_q, d)).astype(NUMPY[dtype])
    k = rng.standard_normal((total_kv, h_kv, d)).astype(NUMPY[dtype])
    v = rng.standard_normal((total_kv, h_kv, d)).astype(NUMPY[dtype])
    inputs = [q, q_indptr, k, v, kv_indptr, np.zeros(total_q, np.int32)]
    inputs += [np.zeros(len(q_lens), np.int32)]
    scalars = [causal, 0, 1.0, 10000.0, SCALE]  # causal, rotary_mode, rope_scale/theta, sm_scale
    shapes = [((total_q, h_q, d), NUMPY[dtype]), ((total_q, h_q), "float32")]
    ref = _attention_prefill_ragged_cpu(h_kv, h_q, d, d, dtype, {})
    want = _run(_build(ref), inputs, scalars, shapes)
    got = _run(_build(ragged_prefill_kernel(h_kv, h_q, d, dtype)), inputs, scalars, shapes)
    np.testing.assert_allclose(got[0], want[0], atol=ATOL[dtype])
    np.testing.assert_allclose(got[1], want[1], atol=1e-5)


@DTYPES
@pytest.mark.parametrize(("heads", "causal"), [((2, 4, 16), 1), ((2, 4, 16), 0), ((3, 9, 64), 1)])
def test_paged_prefill_matches_tvm(heads, causal, dtype):
    """Two sequences: 5 new rows against 3 pages (the last holding 5 keys), and 20 new rows
    against 2 full pages; under the causal mask the last rows see every key."""
    h_kv, h_q, d = heads
    rng = np.random.default_rng(2)
    pages = rng.standard_normal((9, 2, h_kv, PAGE, d)).astype(NUMPY[dtype])
    seq_pages, last, q_lens = [[3, 7, 1], [0, 5]], [5, 16], [5, 20]
    page_indptr = np.cumsum([0] + [len(p) for p in seq_pages]).astype(np.int32)
    values = np.array([p for pages_of_seq in seq_pages for p in pages_of_seq], np.int32)
    q_indptr = np.cumsum([0, *q_lens]).astype(np.int32)
    total = int(q_indptr[-1])
    q = rng.standard_normal((total, h_q, d)).astype(NUMPY[dtype])
    zeros = np.zeros(len(q_lens), np.int32)
    inputs = [q, q_indptr, pages, page_indptr, values, np.array(last, np.int32), zeros]
    inputs += [np.zeros(total, np.int32)]
    scalars = [causal, 0, 1.0, 10000.0, SCALE]  # causal, rotary_mode, rope_scale/theta, sm_scale
    shapes = [((total, h_q, d), NUMPY[dtype]), ((total, h_q), "float32")]
    ref = _attention_prefill_cpu(h_kv, h_q, d, dtype, False, {})
    want = _run(_build(ref), inputs, scalars, shapes)
    got = _run(_build(paged_prefill_kernel(h_kv, h_q, d, dtype)), inputs, scalars, shapes)
    np.testing.assert_allclose(got[0], want[0], atol=ATOL[dtype])
    np.testing.assert_allclose(got[1], want[1], atol=1e-5)


def test_replacement_reads_the_shapes_from_tvms_kernels():
    tvm_decode = _attention_decode_cpu(2, 6, 16, "float16", False, {})
    ours = replacement("batch_decode_paged_kv_cpu", tvm_decode)
    assert ours is not None and ours.attrs["tirx.is_scheduled"]
    tvm_ragged = _attention_prefill_ragged_cpu(2, 6, 16, 16, "float16", {})
    assert replacement("batch_prefill_ragged_kv", tvm_ragged) is not None
    tvm_paged = _attention_prefill_cpu(2, 6, 16, "float16", False, {})
    assert replacement("batch_prefill_paged_kv_cpu", tvm_paged) is not None
    # Kernels it has no replacement for (a sliding window's, here) are left alone; so is a
    # kernel whose parameters are not the named one's.
    tvm_window = _attention_prefill_cpu(2, 6, 16, "float16", True, {})
    assert replacement("batch_prefill_paged_kv_cpu_sliding_window", tvm_window) is None
    assert replacement("batch_prefill_paged_kv_cpu", tvm_ragged) is None
