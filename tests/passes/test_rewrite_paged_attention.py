"""rewrite-paged-attention: both forms' Before/Expected, idempotence, misuse, and numerics through
the reference paged KV cache (prefill and decode must reproduce the forward graph's logits)."""

from __future__ import annotations

import numpy as np
import pytest

from ferrumc.errors import PassError
from ferrumc.ir import Graph
from ferrumc.ir.interpreter import run_graph
from ferrumc.ir.kvcache_ref import PagedKVCache
from ferrumc.ir.types import DType
from ferrumc.passes.rewrite_paged_attention import RewritePagedAttention

# Two attentions (layers 0 and 1, the second with a sliding window) and a reshape naming "seq".
BEFORE = """
graph forward(%tokens: i32[seq], %positions: i32[seq]) {
  %embed.weight = weight : f32[16,8]
  %0 = embedding(%embed.weight, %tokens) : f32[seq,8]
  %layers.0.attn.q.weight = weight : f32[8,8]
  %1 = linear(%0, %layers.0.attn.q.weight) has_bias=false : f32[seq,8]
  %layers.0.attn.k.weight = weight : f32[4,8]
  %2 = linear(%0, %layers.0.attn.k.weight) has_bias=false : f32[seq,4]
  %3 = reshape(%1) shape=[-1,2,4] : f32[seq,2,4]
  %4 = reshape(%2) shape=[-1,1,4] : f32[seq,1,4]
  %5 = rotary(%3, %positions) theta=10000.0 rotary_dim=4 scaling=null : f32[seq,2,4]
  %6 = rotary(%4, %positions) theta=10000.0 rotary_dim=4 scaling=null : f32[seq,1,4]
  %7 = attention(%5, %6, %4) num_heads=2 num_kv_heads=1 scale=0.5 sliding_window=null : f32[seq,2,4]
  %8 = attention(%7, %6, %4) num_heads=2 num_kv_heads=1 scale=0.5 sliding_window=2 : f32[seq,2,4]
  %9 = reshape(%8) shape=["seq",8] : f32[seq,8]
  %lm_head.weight = weight : f32[16,8]
  %10 = linear(%9, %lm_head.weight) has_bias=false : f32[seq,16]
  return logits=%10
}
"""

EXPECTED_PREFILL = """
graph prefill(%tokens: i32[seq], %positions: i32[seq], %kv_cache: kvcache<layers=2,kv_heads=1,head_dim=4,f32>) {
  %embed.weight = weight : f32[16,8]
  %0 = embedding(%embed.weight, %tokens) : f32[seq,8]
  %layers.0.attn.q.weight = weight : f32[8,8]
  %1 = linear(%0, %layers.0.attn.q.weight) has_bias=false : f32[seq,8]
  %layers.0.attn.k.weight = weight : f32[4,8]
  %2 = linear(%0, %layers.0.attn.k.weight) has_bias=false : f32[seq,4]
  %3 = reshape(%1) shape=[-1,2,4] : f32[seq,2,4]
  %4 = reshape(%2) shape=[-1,1,4] : f32[seq,1,4]
  %5 = rotary(%3, %positions) theta=10000.0 rotary_dim=4 scaling=null : f32[seq,2,4]
  %6 = rotary(%4, %positions) theta=10000.0 rotary_dim=4 scaling=null : f32[seq,1,4]
  %7 = paged_attention(%5, %6, %4, %kv_cache) layer=0 num_heads=2 num_kv_heads=1 scale=0.5 sliding_window=null form="prefill" : f32[seq,2,4]
  %8 = paged_attention(%7, %6, %4, %kv_cache) layer=1 num_heads=2 num_kv_heads=1 scale=0.5 sliding_window=2 form="prefill" : f32[seq,2,4]
  %9 = reshape(%8) shape=["seq",8] : f32[seq,8]
  %lm_head.weight = weight : f32[16,8]
  %10 = linear(%9, %lm_head.weight) has_bias=false : f32[seq,16]
  return logits=%10
}
"""

EXPECTED_DECODE = """
graph decode(%tokens: i32[batch], %positions: i32[batch], %kv_cache: kvcache<layers=2,kv_heads=1,head_dim=4,f32>) {
  %embed.weight = weight : f32[16,8]
  %0 = embedding(%embed.weight, %tokens) : f32[batch,8]
  %layers.0.attn.q.weight = weight : f32[8,8]
  %1 = linear(%0, %layers.0.attn.q.weight) has_bias=false : f32[batch,8]
  %layers.0.attn.k.weight = weight : f32[4,8]
  %2 = linear(%0, %layers.0.attn.k.weight) has_bias=false : f32[batch,4]
  %3 = reshape(%1) shape=[-1,2,4] : f32[batch,2,4]
  %4 = reshape(%2) shape=[-1,1,4] : f32[batch,1,4]
  %5 = rotary(%3, %positions) theta=10000.0 rotary_dim=4 scaling=null : f32[batch,2,4]
  %6 = rotary(%4, %positions) theta=10000.0 rotary_dim=4 scaling=null : f32[batch,1,4]
  %7 = paged_attention(%5, %6, %4, %kv_cache) layer=0 num_heads=2 num_kv_heads=1 scale=0.5 sliding_window=null form="decode" : f32[batch,2,4]
  %8 = paged_attention(%7, %6, %4, %kv_cache) layer=1 num_heads=2 num_kv_heads=1 scale=0.5 sliding_window=2 form="decode" : f32[batch,2,4]
  %9 = reshape(%8) shape=["batch",8] : f32[batch,8]
  %lm_head.weight = weight : f32[16,8]
  %10 = linear(%9, %lm_head.weight) has_bias=false : f32[batch,16]
  return logits=%10
}
"""


def test_prefill(passes):
    passes.check(RewritePagedAttention("prefill"), BEFORE, EXPECTED_PREFILL)


def test_decode_renames_the_token_dim(passes):
    passes.check(RewritePagedAttention("decode"), BEFORE, EXPECTED_DECODE)


@pytest.mark.parametrize("form", ["prefill", "decode"])
def test_idempotent(passes, form):
    passes.check_idempotent(RewritePagedAttention(form), BEFORE)


def test_leaves_graph_without_attention_alone(passes):
    passes.check_unchanged(
        RewritePagedAttention("decode"),
        """
        graph forward(%tokens: i32[seq]) {
          %embed.weight = weight : f32[16,8]
          %0 = embedding(%embed.weight, %tokens) : f32[seq,8]
          return h=%0
        }
        """,
    )


def test_rejects_unknown_form():
    with pytest.raises(
        PassError,
        match=r"rewrite-paged-attention: unknown form 'chunked'; use one of prefill, decode",
    ):
        RewritePagedAttention("chunked")


def test_rejects_attentions_with_different_kv_layouts(passes):
    graph = passes.parse(
        """
        graph forward(%a: f32[seq,2,4], %b: f32[seq,2,8]) {
          %0 = attention(%a, %a, %a) num_heads=2 num_kv_heads=2 scale=0.5 sliding_window=null : f32[seq,2,4]
          %1 = attention(%b, %b, %b) num_heads=2 num_kv_heads=2 scale=0.5 sliding_window=null : f32[seq,2,8]
          return a=%0, b=%1
        }
        """
    )
    with pytest.raises(PassError, match="attentions disagree on the KV layout"):
        RewritePagedAttention("prefill")(graph)


def _call(graph: Graph, cache: PagedKVCache, weights, runs: list[list[int]], starts: list[int]):
    """One graph call: runs[i] are the new tokens of sequence i, from position starts[i]."""
    tokens = np.concatenate([np.asarray(r, np.int32) for r in runs])
    positions = np.concatenate(
        [np.arange(s, s + len(r), dtype=np.int32) for r, s in zip(runs, starts, strict=True)]
    )
    cache.begin_forward(list(range(len(runs))), [len(r) for r in runs])
    inputs = {"tokens": tokens, "positions": positions, "kv_cache": cache}
    logits = run_graph(graph, inputs, weights)["logits"]
    cache.end_forward()
    return logits


def _forward(graph: Graph, weights, prompt: list[int]) -> np.ndarray:
    inputs = {
        "tokens": np.asarray(prompt, np.int32),
        "positions": np.arange(len(prompt), dtype=np.int32),
    }
    return run_graph(graph, inputs, weights)["logits"]


PROMPTS = [[1, 5, 7, 2, 9], [3, 3, 8]]


def _cache() -> PagedKVCache:
    cache = PagedKVCache.create(2, 1, 4, num_pages=8, page_size=2)
    for s in range(len(PROMPTS)):
        cache.add_sequence(s)
    return cache


def test_prefill_of_whole_prompts_matches_the_forward_graph(passes):
    forward = passes.parse(BEFORE)
    prefill = passes.apply(RewritePagedAttention("prefill"), forward)
    weights = passes.weights(forward)
    got = _call(prefill, _cache(), weights, PROMPTS, [0, 0])  # ragged: both in one call
    want = np.concatenate([_forward(forward, weights, p) for p in PROMPTS])
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_decode_after_prefill_matches_the_forward_graph(passes):
    forward = passes.parse(BEFORE)
    prefill = passes.apply(RewritePagedAttention("prefill"), forward)
    decode = passes.apply(RewritePagedAttention("decode"), forward)
    weights = passes.weights(forward)
    cache = _cache()
    _call(prefill, cache, weights, [p[:-1] for p in PROMPTS], [0, 0])
    last = _call(decode, cache, weights, [p[-1:] for p in PROMPTS], [len(p) - 1 for p in PROMPTS])
    want = np.stack([_forward(forward, weights, p)[-1] for p in PROMPTS])
    np.testing.assert_allclose(last, want, atol=1e-5)


def test_rejects_a_graph_that_already_has_a_kv_cache_input(passes):
    graph = passes.parse(
        """
        graph forward(%a: f32[seq,2,4], %kv_cache: f32[seq]) {
          %0 = attention(%a, %a, %a) num_heads=2 num_kv_heads=2 scale=0.5 sliding_window=null : f32[seq,2,4]
          return a=%0
        }
        """
    )
    with pytest.raises(PassError, match="already has an input named 'kv_cache'; rename it"):
        RewritePagedAttention("prefill")(graph)


def test_kv_dtype_sets_the_cache_type_and_leaves_the_attentions_alone(passes):
    forward = passes.parse(BEFORE)
    decode = passes.apply(RewritePagedAttention("decode", DType.f16), forward)
    assert str(decode).strip() == EXPECTED_DECODE.strip().replace(
        "head_dim=4,f32>", "head_dim=4,f16>"
    )


def test_an_f16_cache_rounds_what_it_stores(passes):
    """Against the forward graph with k and v rounded to f16: equal up to f32 arithmetic."""
    forward = passes.parse(BEFORE)
    prefill = passes.apply(RewritePagedAttention("prefill", DType.f16), forward)
    weights = passes.weights(forward)
    cache = PagedKVCache.create(2, 1, 4, DType.f16, num_pages=8, page_size=2)
    cache.add_sequence(0)
    got = _call(prefill, cache, weights, PROMPTS[:1], [0])
    exact = _forward(forward, weights, PROMPTS[0])
    assert not np.array_equal(got, exact)  # the rounding shows
    np.testing.assert_allclose(got, exact, rtol=5e-3, atol=5e-3)


def test_rejects_a_kv_dtype_the_kernels_cannot_store():
    with pytest.raises(PassError, match=r"cannot store the KV cache in i32; use one of f32, f16"):
        RewritePagedAttention("decode", DType.i32)
