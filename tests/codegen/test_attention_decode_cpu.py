"""The paged decode kernel (codegen/attention_decode_cpu.py) against numpy attention.

Covers what the kernel does beyond test_schedule_attention.py's comparison with TVM's kernel:
key runs merged by log-sum-exp (several runs per KV head, some empty), the serial and the
parallel path, full and partial last pages, several sequences, GQA groups of 1, 3 and 7 and a
head dim narrower than a page (the per-key lane sum instead of the transposing one).
"""

from __future__ import annotations

import numpy as np
import pytest
import tvm

from ferrumc.codegen.attention_decode_cpu import SERIAL_WORK, decode_kernel
from ferrumc.codegen.targets import TARGETS

PAGE = 16
SCALE = 0.125


def _attention(q, keys, values):
    """Output [Hq, D] and base-2 lse [Hq] of one query row against keys/values [Hkv, n, D]."""
    group = q.shape[0] // keys.shape[0]
    k, v = np.repeat(keys, group, 0), np.repeat(values, group, 0)
    s = np.einsum("hd,hnd->hn", q, k) * SCALE
    w = np.exp(s - s.max(1, keepdims=True))
    den = w.sum(1, keepdims=True)
    return np.einsum("hn,hnd->hd", w / den, v), (s.max(1) + np.log(den[:, 0])) / np.log(2)


def _run(h_kv, h_q, d, lengths, seed=0):
    rng = np.random.default_rng(seed)
    n_pages = [(n + PAGE - 1) // PAGE for n in lengths]
    pool = sum(n_pages) + 3
    pages = rng.standard_normal((pool, 2, h_kv, PAGE, d)).astype(np.float16)
    # Rows past a sequence's end hold garbage: NaN and inf must not leak into the result.
    pages[-1] = np.nan
    order = rng.permutation(pool - 1)
    seq_pages = np.split(order[: sum(n_pages)], np.cumsum(n_pages)[:-1])
    for ids, n in zip(seq_pages, lengths, strict=True):
        if n % PAGE:
            pages[ids[-1], :, :, n % PAGE :] = np.inf
    b = len(lengths)
    q = rng.standard_normal((b, h_q, d)).astype(np.float16)
    indptr = np.cumsum([0, *n_pages]).astype(np.int32)
    values = np.concatenate(seq_pages).astype(np.int32)
    last = np.array([n - PAGE * (p - 1) for n, p in zip(lengths, n_pages, strict=True)], np.int32)
    zeros = np.zeros(b, np.int32)
    cpu = tvm.cpu()
    out = tvm.runtime.tensor(np.zeros((b, h_q, d), np.float16), cpu)
    lse = tvm.runtime.tensor(np.zeros((b, h_q), np.float32), cpu)
    func = decode_kernel(h_kv, h_q, d, "float16").with_attr("global_symbol", "decode")
    lib = tvm.tirx.build(func, target=TARGETS["llvm"].tvm_target())
    inputs = [q, pages, indptr, values, last, zeros, zeros]
    lib(*[tvm.runtime.tensor(a, cpu) for a in inputs], out, lse, 0, 1.0, 10000.0, SCALE)
    for i, (ids, n) in enumerate(zip(seq_pages, lengths, strict=True)):
        keys = np.concatenate([pages[p, 0] for p in ids], axis=1)[:, :n].astype(np.float32)
        vals = np.concatenate([pages[p, 1] for p in ids], axis=1)[:, :n].astype(np.float32)
        want_out, want_lse = _attention(q[i].astype(np.float32), keys, vals)
        np.testing.assert_allclose(out.numpy()[i].astype(np.float32), want_out, atol=2e-3)
        np.testing.assert_allclose(lse.numpy()[i], want_lse, atol=2e-5, rtol=1e-6)


@pytest.mark.parametrize(
    ("h_kv", "h_q", "d", "lengths"),
    [
        (3, 9, 64, [40]),  # SmolLM2's heads at a short context: serial, several runs
        (2, 14, 64, [1]),  # Qwen2.5-0.5B's heads, one key: most runs are empty
        (3, 9, 64, [130]),  # past SERIAL_WORK: the parallel path
        (2, 14, 64, [700]),  # the parallel path, long
        (3, 9, 64, [16, 33, 200]),  # several sequences, full and partial last pages
        (4, 4, 16, [47, 2]),  # no GQA, head dim 16 (one lane group)
        (1, 3, 8, [20]),  # head dim 8: per-key lane sums
    ],
)
def test_decode_matches_numpy(h_kv, h_q, d, lengths):
    _run(h_kv, h_q, d, lengths)


def test_serial_threshold_is_crossed_by_the_parallel_case():
    assert 9 * PAGE * 9 >= SERIAL_WORK > 3 * PAGE * 9  # 130 keys x 9 heads, 40 x 9
