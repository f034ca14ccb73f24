"""The KV cache's split and append copies (codegen/kv_pages_cpu.py) against numpy and the
kernels they replace, for a decode step's few tokens (serial) and a long chunk (parallel)."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm.relax.frontend.nn.llm._page_kernels import _kv_cache_transpose_append

from ferrumc.codegen.attention_cpu import replacement
from ferrumc.codegen.kv_cache import CacheLayout, create_function_module
from ferrumc.codegen.kv_pages_cpu import PARALLEL_TOKENS, append_kernel, split_qkv_kernel
from ferrumc.codegen.targets import TARGETS

H_Q, H_KV, D, PAGE = 6, 2, 16, 16


def _build(func: tvm.tirx.PrimFunc, name: str) -> tvm.runtime.Module:
    return tvm.tirx.build(
        func.with_attr("global_symbol", name), target=TARGETS["llvm"].tvm_target()
    )


def _tensors(*arrays: np.ndarray) -> list[tvm.runtime.Tensor]:
    return [tvm.runtime.tensor(a, tvm.cpu()) for a in arrays]


@pytest.mark.parametrize("tokens", [1, 3, PARALLEL_TOKENS + 5])
def test_split_copies_q_k_v(tokens):
    qkv = np.random.default_rng(0).standard_normal((tokens, H_Q + 2 * H_KV, D)).astype(np.float16)
    outs = _tensors(
        np.zeros((tokens, H_Q, D), np.float16),
        np.zeros((tokens, H_KV, D), np.float16),
        np.zeros((tokens, H_KV, D), np.float16),
    )
    split = _build(split_qkv_kernel(H_Q, H_KV, D, "float16"), "split")
    split(*_tensors(qkv, np.arange(tokens, dtype=np.int32)), *outs, 0)
    q, k, v = (o.numpy() for o in outs)
    np.testing.assert_array_equal(q, qkv[:, :H_Q])
    np.testing.assert_array_equal(k, qkv[:, H_Q : H_Q + H_KV])
    np.testing.assert_array_equal(v, qkv[:, H_Q + H_KV :])


@pytest.mark.parametrize("tokens", [1, 5, PARALLEL_TOKENS + 5])
def test_append_matches_tvm(tokens):
    rng = np.random.default_rng(1)
    num_pages = tokens // PAGE + 4
    pages = rng.standard_normal((num_pages, 2, H_KV, PAGE, D)).astype(np.float16)
    k, v = (rng.standard_normal((tokens, H_KV, D)).astype(np.float16) for _ in range(2))
    slots = rng.permutation(num_pages * PAGE)[:tokens].astype(np.int32)
    slots[tokens // 2] = -1  # a token the cache skips
    got, want = _tensors(pages, pages)
    _build(append_kernel(H_KV, D, "float16"), "ours")(got, *_tensors(k, v, slots))
    _build(_kv_cache_transpose_append(H_KV, D, "float16"), "tvm")(want, *_tensors(k, v, slots))
    np.testing.assert_array_equal(got.numpy(), want.numpy())
    expected = pages.copy()
    for t, slot in enumerate(slots):
        if slot >= 0:
            expected[slot // PAGE, 0, :, slot % PAGE] = k[t]
            expected[slot // PAGE, 1, :, slot % PAGE] = v[t]
    np.testing.assert_array_equal(got.numpy(), expected)


def test_the_cache_module_gets_our_kernels():
    mod = create_function_module(CacheLayout(2, H_Q, H_KV, D, "float16"), TARGETS["llvm"])
    for name in ("fused_rope", "tir_kv_cache_transpose_append", "batch_decode_paged_kv_cpu"):
        func = mod[name]
        ours = replacement(name, func)
        assert ours is not None and ours.attrs["tirx.is_scheduled"], name
        assert len(ours.params) == len(func.params), name
