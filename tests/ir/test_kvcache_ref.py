"""The reference paged KV cache (page accounting, attention over cached tokens) and reference generation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ferrumc.errors import RequestError
from ferrumc.ir import GraphBuilder, Module, ops, verify
from ferrumc.ir.kvcache_ref import PagedKVCache
from ferrumc.ir.reference import forward_logits, generate, generate_batch
from ferrumc.ir.types import DType, KVCacheType, TensorType

RNG = np.random.default_rng(1)


def rand(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def naive_attention(q, keys, values, scale, window=None):
    """Query i (the last len(q) of len(keys) tokens) over keys j <= its position, by loops."""
    past, group = len(keys) - len(q), q.shape[1] // keys.shape[1]
    out = np.zeros(q.shape)
    for i in range(len(q)):
        pos = past + i
        for h in range(q.shape[1]):
            kv = h // group
            seen = [j for j in range(pos + 1) if window is None or pos - j < window]
            s = [scale * float(np.dot(q[i, h].astype(np.float64), keys[j, kv])) for j in seen]
            e = [math.exp(v - max(s)) for v in s]
            for j, ej in zip(seen, e, strict=True):
                out[i, h] += ej / sum(e) * values[j, kv]
    return out


def cache(num_pages: int = 8, page_size: int = 4, kv_heads: int = 1) -> PagedKVCache:
    return PagedKVCache.create(2, kv_heads, 2, num_pages=num_pages, page_size=page_size)


def forward(c: PagedKVCache, seqs: dict[int, int], layer: int = 0, heads: int = 1, window=None):
    """One call: `seqs[s]` new random tokens per sequence; returns (q, k, v, out)."""
    t, kvh = sum(seqs.values()), c.type.num_kv_heads
    q, k, v = rand(t, heads, 2), rand(t, kvh, 2), rand(t, kvh, 2)
    c.begin_forward(list(seqs), list(seqs.values()))
    out = c.attend(layer, q, k, v, 0.7, window)
    c.end_forward()
    return q, k, v, out


# --- page accounting -------------------------------------------------------------------------------


def test_pages_are_allocated_per_page_size_and_freed_on_remove() -> None:
    c = cache(num_pages=4, page_size=4)
    c.add_sequence(0)
    assert c.num_free_pages == 4 and c.seq_len(0) == 0
    forward(c, {0: 5})
    assert c.num_free_pages == 2 and c.seq_len(0) == 5
    forward(c, {0: 3})  # 8 tokens still fit in 2 pages
    assert c.num_free_pages == 2 and c.seq_len(0) == 8
    forward(c, {0: 1})
    assert c.num_free_pages == 1 and len(c.page_tables[0]) == 3
    c.remove_sequence(0)
    assert c.num_free_pages == 4
    with pytest.raises(RequestError, match=r"sequence 0 is not in the KV cache \(known: \[\]\)"):
        c.seq_len(0)


def test_running_out_of_pages_is_a_request_error_that_allocates_nothing() -> None:
    c = cache(num_pages=3, page_size=2)
    c.add_sequence(0)
    c.add_sequence(1)
    forward(c, {0: 3})  # 2 pages, 1 free
    with pytest.raises(
        RequestError, match=r"out of pages: .* needs 2 more pages of 2 tokens, 1 free"
    ):
        c.begin_forward([0, 1], [2, 2])  # seq 0 grows to 3 pages, seq 1 takes 1
    assert c.num_free_pages == 1 and [len(c.page_tables[s]) for s in (0, 1)] == [2, 0]
    forward(c, {1: 2})  # no forward was left half begun
    assert c.num_free_pages == 0 and c.seq_len(1) == 2


def test_fork_shares_full_pages_copies_a_partial_one_and_then_diverges() -> None:
    c = cache(num_pages=6, page_size=2)
    c.add_sequence(0)
    forward(c, {0: 3})
    c.fork_sequence(0, 1)
    assert c.num_free_pages == 3 and c.seq_len(1) == 3
    assert set(c.page_tables[0]) & set(c.page_tables[1]) == {c.page_tables[0][0]}
    # The same query on parent and child sees the same history.
    q = rand(1, 1, 2)
    k, v = rand(1, 1, 2), rand(1, 1, 2)
    c.begin_forward([0, 1], [1, 1])
    out = c.attend(
        0, np.concatenate([q, q]), np.concatenate([k, k]), np.concatenate([v, v]), 0.7, None
    )
    c.end_forward()
    assert (out[0] == out[1]).all()
    # Writing into the child leaves the parent's pages alone.
    before = [c.keys[0][p].copy() for p in c.page_tables[0]]
    forward(c, {1: 2})
    assert all((c.keys[0][p] == b).all() for p, b in zip(c.page_tables[0], before, strict=True))
    assert c.num_free_pages == 2
    c.fork_sequence(1, 2)  # 6 tokens, 3 full pages: all shared, none taken
    assert c.num_free_pages == 2 and c.page_tables[2] == c.page_tables[1]
    c.fork_sequence(1, 3, 5)  # a partial last page is copied
    c.fork_sequence(1, 4, 3)
    with pytest.raises(RequestError, match="out of pages: fork 1 into 5 needs 1 more pages"):
        c.fork_sequence(1, 5, 1)
    c.remove_sequence(0)  # its first page is still held by 1..4; its second goes back
    assert c.num_free_pages == 1 and c.seq_len(1) == 6
    for s in (1, 2, 3, 4):
        c.remove_sequence(s)
    assert c.num_free_pages == 6


def test_misuse_is_reported() -> None:
    c = cache()
    c.add_sequence(0)
    with pytest.raises(RequestError, match="sequence 0 is already in the KV cache"):
        c.add_sequence(0)
    with pytest.raises(RequestError, match="sequence 7 is not in the KV cache"):
        c.begin_forward([7], [1])
    with pytest.raises(RequestError, match="distinct seq_ids and one length each"):
        c.begin_forward([0, 0], [1, 1])
    with pytest.raises(RequestError, match="at least one new token"):
        c.begin_forward([0], [0])
    with pytest.raises(RequestError, match="attend called outside begin_forward"):
        c.attend(0, rand(1, 1, 2), rand(1, 1, 2), rand(1, 1, 2), 1.0, None)
    with pytest.raises(RequestError, match="end_forward called without begin_forward"):
        c.end_forward()
    c.begin_forward([0], [2])
    with pytest.raises(RequestError, match="attend got 3 tokens but begin_forward announced 2"):
        c.attend(0, rand(3, 1, 2), rand(3, 1, 2), rand(3, 1, 2), 1.0, None)
    with pytest.raises(RequestError, match="begin_forward called twice"):
        c.begin_forward([0], [1])
    with pytest.raises(RequestError, match="in the forward in progress"):
        c.remove_sequence(0)


# --- attention through the cache -----------------------------------------------------------------


@pytest.mark.parametrize(("heads", "kv_heads", "window"), [(1, 1, None), (4, 2, None), (2, 1, 3)])
def test_ragged_prefill_then_decode_attend_to_their_own_history(heads, kv_heads, window) -> None:
    c = cache(num_pages=12, page_size=2, kv_heads=kv_heads)
    history: dict[int, list] = {0: [], 1: [], 2: []}
    for s in history:
        c.add_sequence(s)
    for step in ({0: 3, 1: 5, 2: 1}, {0: 1, 1: 1, 2: 1}, {2: 4, 0: 1}):
        q, k, v, out = forward(c, step, layer=1, heads=heads, window=window)
        start = 0
        for s, n in step.items():
            history[s].append((k[start : start + n], v[start : start + n]))
            keys = np.concatenate([h[0] for h in history[s]])
            values = np.concatenate([h[1] for h in history[s]])
            want = naive_attention(q[start : start + n], keys, values, 0.7, window)
            np.testing.assert_allclose(out[start : start + n], want, atol=1e-5)
            start += n
    assert (c.keys[0] == 0).all()  # only layer 1 was written


def test_the_cache_rounds_stored_keys_to_its_dtype() -> None:
    c = PagedKVCache(KVCacheType(1, 1, 1, DType.f16), num_pages=1, page_size=4)
    c.add_sequence(0)
    c.begin_forward([0], [1])
    c.attend(
        0,
        np.ones((1, 1, 1), np.float32),
        np.full((1, 1, 1), 1 + 2**-12, np.float32),
        np.ones((1, 1, 1), np.float32),
        1.0,
        None,
    )
    c.end_forward()
    assert c.keys[0].dtype == np.float16 and c.keys[0][0, 0, 0, 0] == 1.0


# --- paged generation against the forward graph ----------------------------------------------------

VOCAB, HIDDEN, HEAD_DIM = 13, 8, 4


def one_layer(form: str, heads: int, kv_heads: int, window: int | None):
    """embed -> norm -> q, k, v -> rotary -> attention -> o -> residual -> norm -> logits."""
    b = GraphBuilder(form)
    tokens_dim = "batch" if form == "decode" else "seq"
    tokens = b.input("tokens", TensorType(DType.i32, (tokens_dim,)))
    positions = b.input("positions", TensorType(DType.i32, (tokens_dim,)))

    def w(name: str, *shape: int):
        return b.weight(name, DType.f32, shape)

    x = b.emit(ops.Embedding(), w("embed", VOCAB, HIDDEN), tokens)
    h = b.emit(ops.RMSNorm(), x, w("attn_norm", HIDDEN))
    q, k, v = (
        b.emit(
            ops.Reshape(shape=(-1, n, HEAD_DIM)),
            b.emit(ops.Linear(), h, w(name, n * HEAD_DIM, HIDDEN)),
        )
        for name, n in (("q", heads), ("k", kv_heads), ("v", kv_heads))
    )
    rotary = ops.Rotary(theta=100.0, rotary_dim=HEAD_DIM)
    q, k = b.emit(rotary, q, positions), b.emit(rotary, k, positions)
    attrs = {"num_heads": heads, "num_kv_heads": kv_heads, "scale": 0.5, "sliding_window": window}
    if form == "forward":
        a = b.emit(ops.Attention(**attrs), q, k, v)
    else:
        kv_cache = b.input("kv_cache", KVCacheType(1, kv_heads, HEAD_DIM, DType.f32))
        a = b.emit(ops.PagedAttention(layer=0, form=form, **attrs), q, k, v, kv_cache)
    o = b.emit(
        ops.Linear(),
        b.emit(ops.Reshape(shape=(-1, heads * HEAD_DIM)), a),
        w("o", HIDDEN, heads * HEAD_DIM),
    )
    h = b.emit(ops.RMSNorm(), b.emit(ops.Add(), x, o), w("norm", HIDDEN))
    return verify(b.build({"logits": b.emit(ops.Linear(), h, w("lm_head", VOCAB, HIDDEN))}))


def model(heads: int = 2, kv_heads: int = 1, window: int | None = None):
    graphs = {f: one_layer(f, heads, kv_heads, window) for f in ("forward", "prefill", "decode")}
    weights = {n: rand(*t.shape) for n, t in graphs["forward"].weight_types().items()}
    return graphs.pop("forward"), Module(graphs), weights


@pytest.mark.parametrize(("heads", "kv_heads", "window"), [(2, 2, None), (4, 2, None), (2, 1, 3)])
def test_prefill_then_decode_reproduces_the_forward_logits(heads, kv_heads, window) -> None:
    forward_graph, paged, weights = model(heads, kv_heads, window)
    prompt = [3, 1, 4, 1, 5, 9]
    gen = generate(paged, weights, prompt, steps=5, page_size=2)
    full = forward_logits(forward_graph, weights, prompt + gen.tokens[:-1])
    assert gen.logits.shape == (5, VOCAB)
    np.testing.assert_allclose(gen.logits, full[len(prompt) - 1 :], atol=1e-5)
    assert gen.tokens == [int(t) for t in np.argmax(full[len(prompt) - 1 :], axis=-1)]


def test_batched_generation_matches_one_prompt_at_a_time() -> None:
    forward_graph, paged, weights = model(4, 2, window=4)
    prompts = [[2, 7, 1, 8, 2], [11], [6, 0, 2, 2, 1, 4, 0, 8, 9]]
    batch = generate_batch(paged, weights, prompts, steps=4, page_size=2)
    for prompt, gen in zip(prompts, batch, strict=True):
        alone = generate(paged, weights, prompt, steps=4, page_size=2)
        assert gen.tokens == alone.tokens
        np.testing.assert_allclose(gen.logits, alone.logits, atol=1e-5)
        full = forward_logits(forward_graph, weights, prompt + gen.tokens[:-1])
        np.testing.assert_allclose(gen.logits, full[len(prompt) - 1 :], atol=1e-5)


def test_generation_needs_a_paged_module() -> None:
    forward_graph, paged, weights = model()
    with pytest.raises(RequestError, match=r"lacks graph 'prefill'; has \['forward'\]"):
        generate(Module({"forward": forward_graph}), weights, [1, 2], steps=1)
    with pytest.raises(RequestError, match="non-empty prompts"):
        generate(paged, weights, [], steps=1)
