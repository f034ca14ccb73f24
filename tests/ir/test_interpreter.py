"""Every interpreter kernel against a deliberately naive computation (Python loops or hand values)."""

from __future__ import annotations

import math
import weakref

import ml_dtypes
import numpy as np
import pytest

from ferrumc.errors import CheckpointError, RequestError, VerifyError
from ferrumc.ir import GraphBuilder, ops
from ferrumc.ir.int4 import pack_int4, unpack_int4
from ferrumc.ir.interpreter import KERNELS, run_graph
from ferrumc.ir.rope import RopeScaling, inv_freq
from ferrumc.ir.types import DType, KVCacheType, TensorType

RNG = np.random.default_rng(0)
BF16 = ml_dtypes.bfloat16


def rand(*shape: int, dtype=np.float32) -> np.ndarray:
    return RNG.standard_normal(shape).astype(dtype)


def run(op: ops.Op, *args):
    return KERNELS[type(op)](op, *args)


def test_every_op_has_a_kernel() -> None:
    wanted = {cls for cls in ops.OPS.values() if cls not in ops.SOURCES}
    assert set(KERNELS) == wanted


# --- linear algebra ------------------------------------------------------------------------------


def test_embedding_gathers_rows_and_rejects_bad_ids() -> None:
    table, ids = rand(5, 3), np.array([[0, 4], [2, 2]], np.int32)
    out = run(ops.Embedding(), table, ids)
    for i in range(2):
        for j in range(2):
            assert list(out[i, j]) == list(table[ids[i, j]])
    with pytest.raises(RequestError, match=r"token id 5 outside the vocabulary 0\.\.4"):
        run(ops.Embedding(), table, np.array([5], np.int32))


@pytest.mark.parametrize("has_bias", [False, True])
def test_linear(has_bias: bool) -> None:
    x, w, b = rand(2, 3, 4), rand(5, 4), rand(5)
    out = run(ops.Linear(has_bias=has_bias), x, w, *([b] if has_bias else []))
    assert out.shape == (2, 3, 5) and out.dtype == np.float32
    for i in range(2):
        for t in range(3):
            for n in range(5):
                want = sum(float(x[i, t, k]) * float(w[n, k]) for k in range(4))
                want += float(b[n]) if has_bias else 0.0
                assert out[i, t, n] == pytest.approx(want, abs=1e-5)


@pytest.mark.parametrize(("has_zeros", "has_bias"), [(False, False), (True, False), (True, True)])
def test_int4_linear(has_zeros: bool, has_bias: bool) -> None:
    n, k, g = 3, 8, 4
    q = RNG.integers(0, 16, (n, k))
    scales, zeros, bias, x = rand(n, k // g), rand(n, k // g), rand(n), rand(2, k)
    extra = ([zeros] if has_zeros else []) + ([bias] if has_bias else [])
    op = ops.Int4Linear(group_size=g, has_zeros=has_zeros, has_bias=has_bias)
    out = run(op, x, pack_int4(q), scales, *extra)
    for t in range(2):
        for r in range(n):
            total = float(bias[r]) if has_bias else 0.0
            for c in range(k):
                zero = float(zeros[r, c // g]) if has_zeros else 8.0
                total += float(x[t, c]) * float(scales[r, c // g]) * (int(q[r, c]) - zero)
            assert out[t, r] == pytest.approx(total, abs=1e-4)


def test_int4_linear_swiglu_is_silu_of_the_first_half_times_the_second() -> None:
    n, k, g = 6, 8, 4
    q = RNG.integers(0, 16, (n, k))
    scales, bias, x = rand(n, k // g), rand(n), rand(3, k)
    y = run(ops.Int4Linear(group_size=g, has_bias=True), x, pack_int4(q), scales, bias)
    out = run(
        ops.Int4Linear(group_size=g, has_bias=True, swiglu=True), x, pack_int4(q), scales, bias
    )
    gate, up = y[:, :3].astype(np.float64), y[:, 3:].astype(np.float64)
    np.testing.assert_allclose(out, gate / (1 + np.exp(-gate)) * up, rtol=1e-5, atol=1e-6)
    b = GraphBuilder("odd")
    xv = b.input("x", TensorType(DType.f32, (2, 8)))
    codes = b.weight("q", DType.u4, (5, 8))
    s = b.weight("s", DType.f32, (5, 2))
    with pytest.raises(VerifyError, match="swiglu needs an even out dim"):
        b.emit(ops.Int4Linear(group_size=4, swiglu=True), xv, codes, s)


@pytest.mark.parametrize("has_zeros", [False, True])
def test_int4_linear_with_perm_matches_numpy_dequantize_and_matmul(has_zeros: bool) -> None:
    """Act-order: column k of q multiplies x[..., perm[k]]; scales may be f16."""
    n, k, g = 5, 16, 8
    q = RNG.integers(0, 16, (n, k))
    scales = rand(n, k // g).astype(np.float16)
    zeros = RNG.integers(0, 16, (n, k // g)).astype(np.float32)
    perm = RNG.permutation(k).astype(np.int32)
    x, bias = rand(3, k), rand(n)
    extra = [zeros] if has_zeros else []
    op = ops.Int4Linear(group_size=g, has_zeros=has_zeros, has_perm=True, has_bias=True)
    out = run(op, x, pack_int4(q), scales, *extra, perm, bias)
    zero = np.repeat(zeros, g, axis=1) if has_zeros else 8.0
    w = np.repeat(scales.astype(np.float64), g, axis=1) * (q - zero)  # [N, K]
    want = x.astype(np.float64)[:, perm] @ w.T + bias
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)
    # The gather matters: without it the result differs.
    assert not np.allclose(out, x.astype(np.float64) @ w.T + bias, atol=1e-3)


def test_int4_packing_is_low_nibble_first_and_round_trips() -> None:
    assert pack_int4(np.array([[1, 2, 15, 0]])).tolist() == [[0x21, 0x0F]]
    assert unpack_int4(np.array([0x21, 0xF0], np.uint8)).tolist() == [1, 2, 0, 15]
    values = RNG.integers(0, 16, (3, 5, 8))
    packed = pack_int4(values)
    assert packed.shape == (3, 5, 4) and packed.dtype == np.uint8
    assert (unpack_int4(packed) == values).all()
    with pytest.raises(ValueError, match="even last axis"):
        pack_int4(np.zeros((2, 3), np.int64))
    with pytest.raises(ValueError, match=r"0\.\.15"):
        pack_int4(np.array([16, 0]))


# --- normalization and position -----------------------------------------------------------------


def naive_rms(row: list[float], w: list[float], eps: float) -> list[float]:
    scale = 1.0 / math.sqrt(sum(v * v for v in row) / len(row) + eps)
    return [v * scale * wi for v, wi in zip(row, w, strict=True)]


def test_rms_norm_and_add_rms_norm() -> None:
    x, r, w = rand(3, 8), rand(3, 8), rand(8)
    out = run(ops.RMSNorm(eps=1e-5), x, w)
    summed_out, summed = run(ops.AddRMSNorm(eps=1e-5), x, r, w)
    for t in range(3):
        assert out[t].tolist() == pytest.approx(
            naive_rms(x[t].tolist(), w.tolist(), 1e-5), abs=1e-5
        )
        s = [float(a) + float(b) for a, b in zip(x[t], r[t], strict=True)]
        assert summed[t].tolist() == pytest.approx(s, abs=1e-6)
        assert summed_out[t].tolist() == pytest.approx(naive_rms(s, w.tolist(), 1e-5), abs=1e-5)


def test_rms_norm_bf16_rounds_before_the_weight_like_transformers() -> None:
    x, w = rand(4, 16, dtype=BF16), rand(16, dtype=BF16)
    out = run(ops.RMSNorm(eps=1e-6), x, w)
    assert out.dtype == BF16
    for t in range(4):
        normed = naive_rms([float(v) for v in x[t]], [1.0] * 16, 1e-6)
        want = [float(BF16(float(BF16(v)) * float(wi))) for v, wi in zip(normed, w, strict=True)]
        assert [float(v) for v in out[t]] == want


def naive_rotary(x: np.ndarray, pos: np.ndarray, freqs: list[float], dim: int, attn: float = 1.0):
    out = x.astype(np.float64)
    half = dim // 2
    for t in range(x.shape[0]):
        for h in range(x.shape[1]):
            for i in range(half):
                c, s = math.cos(pos[t] * freqs[i]) * attn, math.sin(pos[t] * freqs[i]) * attn
                a, b = float(x[t, h, i]), float(x[t, h, i + half])
                out[t, h, i], out[t, h, i + half] = a * c - b * s, b * c + a * s
    return out


@pytest.mark.parametrize("rotary_dim", [8, 4])
def test_rotary_rotates_half_on_the_first_rotary_dim(rotary_dim: int) -> None:
    x, pos = rand(3, 2, 8), np.array([0, 5, 17], np.int32)
    out = run(ops.Rotary(theta=100.0, rotary_dim=rotary_dim), x, pos)
    freqs = [100.0 ** (-2 * i / rotary_dim) for i in range(rotary_dim // 2)]
    np.testing.assert_allclose(out, naive_rotary(x, pos, freqs, rotary_dim), atol=1e-5)
    assert (out[..., rotary_dim:] == x[..., rotary_dim:]).all()


def test_rotary_scalings_divide_frequencies_and_scale_by_the_attention_factor() -> None:
    x, pos = rand(2, 1, 8), np.array([3, 9], np.int32)
    linear = run(ops.Rotary(theta=100.0, rotary_dim=8, scaling=RopeScaling("linear", 4.0)), x, pos)
    freqs = [100.0 ** (-2 * i / 8) / 4.0 for i in range(4)]
    np.testing.assert_allclose(linear, naive_rotary(x, pos, freqs, 8), atol=1e-5)
    yarn = RopeScaling(
        "yarn", factor=4.0, original_max_position_embeddings=32, attention_factor=1.5
    )
    out = run(ops.Rotary(theta=100.0, rotary_dim=8, scaling=yarn), x, pos)
    freqs = [float(f) for f in inv_freq(100.0, 8, yarn)[0]]
    np.testing.assert_allclose(out, naive_rotary(x, pos, freqs, 8, attn=1.5), atol=1e-5)


def test_inv_freq_default_linear_and_llama3_by_hand() -> None:
    default, factor = inv_freq(10000.0, 8, None)
    assert factor == 1.0
    assert default.tolist() == pytest.approx([1.0, 0.1, 0.01, 0.001], rel=1e-6)
    linear, _ = inv_freq(10000.0, 8, RopeScaling("linear", factor=2.0))
    assert linear.tolist() == pytest.approx([0.5, 0.05, 0.005, 0.0005], rel=1e-6)
    # Wavelengths 2π/f against 200/4 and 200/1: 6.3 (kept), 62.8 (smoothed), 628 and 6283 (/ 8).
    s = RopeScaling("llama3", 8.0, 1.0, 4.0, original_max_position_embeddings=200)
    llama3, _ = inv_freq(10000.0, 8, s)
    smooth = (200 / (2 * math.pi / 0.1) - 1) / 3
    medium = (1 - smooth) * 0.1 / 8 + smooth * 0.1
    assert llama3.tolist() == pytest.approx([1.0, medium, 0.01 / 8, 0.001 / 8], rel=1e-6)


def test_inv_freq_yarn_by_hand() -> None:
    s = RopeScaling("yarn", factor=4.0, original_max_position_embeddings=64)
    freqs, factor = inv_freq(10000.0, 16, s)
    assert factor == pytest.approx(0.1 * math.log(4.0) + 1.0)

    def correction(rotations: float) -> float:
        return 16 * math.log(64 / (rotations * 2 * math.pi)) / (2 * math.log(10000.0))

    low, high = max(math.floor(correction(32)), 0), min(math.ceil(correction(1)), 15)
    for i in range(8):
        base = 10000.0 ** (2 * i / 16)
        ramp = min(max((i - low) / (high - low), 0.0), 1.0)
        want = (1 / (4 * base)) * ramp + (1 / base) * (1 - ramp)
        assert freqs[i] == pytest.approx(want, rel=1e-5)


# --- attention ----------------------------------------------------------------------------------------


def naive_attention(q, k, v, scale, window=None, past=0):
    """Per query token and head, softmax over the visible keys with math.exp."""
    tq, hq, d = q.shape
    group = hq // k.shape[1]
    out = np.zeros((tq, hq, d))
    for i in range(tq):
        for h in range(hq):
            kv, pos = h // group, past + i
            seen = [j for j in range(pos + 1) if window is None or pos - j < window]
            scores = [
                scale * sum(float(q[i, h, c]) * float(k[j, kv, c]) for c in range(d)) for j in seen
            ]
            top = max(scores)
            weights = [math.exp(s - top) for s in scores]
            for j, wj in zip(seen, weights, strict=True):
                out[i, h] += wj / sum(weights) * v[j, kv].astype(np.float64)
    return out


@pytest.mark.parametrize(("heads", "kv_heads", "window"), [(2, 2, None), (4, 2, None), (4, 1, 3)])
def test_attention_is_causal_with_gqa_and_sliding_window(heads, kv_heads, window) -> None:
    q, k, v = rand(6, heads, 4), rand(6, kv_heads, 4), rand(6, kv_heads, 4)
    op = ops.Attention(num_heads=heads, num_kv_heads=kv_heads, scale=0.5, sliding_window=window)
    np.testing.assert_allclose(run(op, q, k, v), naive_attention(q, k, v, 0.5, window), atol=1e-5)


def test_attention_gqa_maps_query_head_to_kv_head_by_division() -> None:
    q, k, v = rand(3, 4, 2), rand(3, 2, 2), np.zeros((3, 2, 2), np.float32)
    v[:, 1] = (
        1.0  # only kv head 1 carries values: query heads 2 and 3 read it (h // 2), not 1 and 3
    )
    out = run(ops.Attention(num_heads=4, num_kv_heads=2), q, k, v)
    assert (out[:, :2] == 0).all() and np.allclose(out[:, 2:], 1.0)


def test_attention_window_as_long_as_the_sequence_changes_nothing() -> None:
    q, k, v = rand(5, 2, 4), rand(5, 2, 4), rand(5, 2, 4)
    full = run(ops.Attention(num_heads=2, num_kv_heads=2), q, k, v)
    windowed = run(ops.Attention(num_heads=2, num_kv_heads=2, sliding_window=5), q, k, v)
    narrow = run(ops.Attention(num_heads=2, num_kv_heads=2, sliding_window=1), q, k, v)
    assert (full == windowed).all()
    np.testing.assert_allclose(narrow, v, atol=1e-6)  # a window of 1: each token sees itself only


# --- elementwise ------------------------------------------------------------------------------------


def test_add_and_mul_broadcast() -> None:
    a, b = np.array([[1.0], [2.0]], np.float32), np.array([10.0, 20.0, 30.0], np.float32)
    assert run(ops.Add(), a, b).tolist() == [[11, 21, 31], [12, 22, 32]]
    assert run(ops.Mul(), a, b).tolist() == [[10, 20, 30], [20, 40, 60]]


def test_silu_and_gelu() -> None:
    x = np.array([-20.0, -1.5, 0.0, 0.3, 2.0, 90.0], np.float32)
    xs = [float(v) for v in x]
    silu = [v / (1 + math.exp(-v)) for v in xs]
    erf = [0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in xs]
    c = math.sqrt(2 / math.pi)
    tanh = [0.5 * v * (1 + math.tanh(c * (v + 0.044715 * v**3))) for v in xs]
    assert run(ops.SiLU(), x).tolist() == pytest.approx(silu, rel=1e-6, abs=1e-12)
    assert run(ops.GELU(), x).tolist() == pytest.approx(erf, rel=1e-6, abs=1e-12)
    assert run(ops.GELU(approximate="tanh"), x).tolist() == pytest.approx(tanh, rel=1e-6, abs=1e-12)


@pytest.mark.parametrize("axis", [-1, 0])
def test_softmax(axis: int) -> None:
    x = rand(3, 4)
    out = run(ops.Softmax(axis=axis), x)
    rows = x if axis == -1 else x.T
    got = out if axis == -1 else out.T
    for r, g in zip(rows, got, strict=True):
        e = [math.exp(float(v)) for v in r]
        assert g.tolist() == pytest.approx([v / sum(e) for v in e], rel=1e-6)


def test_cast_rounds_to_nearest_even() -> None:
    # bf16 keeps 8 significant bits: 1 + 2^-8 is a tie (-> 1), 1 + 3 * 2^-8 a tie (-> 1 + 2^-6).
    x = np.array([1 + 2**-8, 1 + 3 * 2**-8, 1 + 2**-8 + 2**-20], np.float32)
    assert run(ops.Cast(dtype=DType.bf16), x).astype(np.float32).tolist() == [
        1.0,
        1 + 2**-6,
        1 + 2**-7,
    ]
    # f16 keeps 11: 1 + 2^-11 -> 1, 1 + 3 * 2^-11 -> 1 + 2^-9.
    y = np.array([1 + 2**-11, 1 + 3 * 2**-11], np.float32)
    assert run(ops.Cast(dtype=DType.f16), y).astype(np.float32).tolist() == [1.0, 1 + 2**-9]
    # f16 -> bf16: 2050 is exact in f16; bf16's spacing at 2048 is 16.
    assert run(ops.Cast(dtype=DType.bf16), np.array([2050.0], np.float16)).tolist() == [2048.0]
    assert run(ops.Cast(dtype=DType.f32), np.array([3], np.int32)).tolist() == [3.0]


# --- layout --------------------------------------------------------------------------------------------


def test_reshape_and_transpose() -> None:
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    flat = [float(v) for v in range(24)]
    r = run(ops.Reshape(shape=(4, -1)), x)
    assert r.shape == (4, 6)
    assert [r[i, j] for i in range(4) for j in range(6)] == flat
    t = run(ops.Transpose(perm=(2, 0, 1)), x)
    assert t.shape == (4, 2, 3)
    for a in range(2):
        for b in range(3):
            for c in range(4):
                assert t[c, a, b] == x[a, b, c]


def test_concat_and_split() -> None:
    a, b = np.array([[1, 2]], np.float32), np.array([[3, 4, 5]], np.float32)
    assert run(ops.Concat(axis=-1), a, b).tolist() == [[1, 2, 3, 4, 5]]
    assert run(ops.Concat(axis=0), a, a).tolist() == [[1, 2], [1, 2]]
    pieces = run(ops.Split(axis=1, sizes=(1, 3, 1)), np.array([[1, 2, 3, 4, 5]], np.float32))
    assert [p.tolist() for p in pieces] == [[[1]], [[2, 3, 4]], [[5]]]


# --- mixture of experts ----------------------------------------------------------------------------


def test_moe_route_by_hand() -> None:
    logits = np.array([[1.0, 2.0, 3.0, 0.0], [0.5, 0.5, 0.5, 0.5]], np.float32)
    e = [math.exp(v) for v in (1.0, 2.0, 3.0, 0.0)]
    p = [v / sum(e) for v in e]
    w, ids = run(ops.MoERoute(top_k=2, normalize=False), logits)
    assert ids.dtype == np.int32 and ids.tolist() == [[2, 1], [0, 1]]  # ties: lower id first
    np.testing.assert_allclose(w, [[p[2], p[1]], [0.25, 0.25]], rtol=1e-6)
    w, _ = run(ops.MoERoute(top_k=2, normalize=True), logits)
    np.testing.assert_allclose(w, [[p[2] / (p[1] + p[2]), p[1] / (p[1] + p[2])], [0.5, 0.5]], 1e-6)
    w, _ = run(ops.MoERoute(top_k=1), logits.astype(BF16))
    assert w.dtype == BF16 and w.astype(np.float32).tolist() == [[1.0], [1.0]]


def naive_moe(x, weights, ids, gate, up, down):
    out = np.zeros(x.shape)
    for t in range(x.shape[0]):
        for j in range(ids.shape[1]):
            e = ids[t, j]
            inter = gate.shape[1]
            silu = []
            for i in range(inter):
                g = sum(float(gate[e, i, c]) * float(x[t, c]) for c in range(x.shape[1]))
                u = sum(float(up[e, i, c]) * float(x[t, c]) for c in range(x.shape[1]))
                silu.append(g / (1 + math.exp(-g)) * u)
            for c in range(x.shape[1]):
                y = sum(float(down[e, c, i]) * silu[i] for i in range(inter))
                out[t, c] += float(weights[t, j]) * y
    return out


def test_moe_experts_fused_and_unfused() -> None:
    x, weights = rand(4, 6), rand(4, 2)
    ids = np.array([[0, 2], [2, 1], [1, 0], [2, 0]], np.int32)
    gate, up, down = rand(3, 5, 6), rand(3, 5, 6), rand(3, 6, 5)
    want = naive_moe(x, weights, ids, gate, up, down)
    unfused = run(ops.MoEExperts(), x, weights, ids, gate, up, down)
    fused = run(
        ops.MoEExperts(fused_gate_up=True), x, weights, ids, np.concatenate([gate, up], 1), down
    )
    np.testing.assert_allclose(unfused, want, atol=1e-4)
    np.testing.assert_allclose(fused, want, atol=1e-4)


# --- the runner ------------------------------------------------------------------------------------


def _two_input_graph():
    b = GraphBuilder("g")
    x = b.input("x", TensorType(DType.f32, ("seq", 4)))
    y = b.input("y", TensorType(DType.f32, ("seq", 4)))
    ids = b.input("ids", TensorType(DType.i32, ("seq",)))
    e = b.emit(ops.Embedding(), b.weight("table", DType.f32, (5, 4)), ids)
    return b.build({"out": b.emit(ops.Add(), b.emit(ops.Add(), x, y), e)})


def test_run_graph_checks_inputs() -> None:
    g, x = _two_input_graph(), np.ones((3, 4), np.float32)
    w = {"table": np.zeros((5, 4), np.float32)}
    out = run_graph(g, {"x": x, "y": x, "ids": [0, 1, 2]}, w)["out"]  # lists are converted
    assert out.tolist() == [[2.0] * 4] * 3
    cases = [
        ({"x": x, "y": x}, r"takes inputs \['ids', 'x', 'y'\]; missing \['ids'\], unexpected \[\]"),
        ({"x": x, "y": x, "ids": [0], "z": 1}, r"missing \[\], unexpected \['z'\]"),
        ({"x": x, "y": x, "ids": np.zeros(3, np.int64)}, "input 'ids': got int64, expected int32"),
        ({"x": x, "y": np.ones((2, 4), np.float32), "ids": [0, 1, 2]}, "dim 'seq' is 2 here but 3"),
        ({"x": x, "y": np.ones((3, 5), np.float32), "ids": [0, 1, 2]}, r"expected \['seq', 4\]"),
        ({"x": x, "y": np.ones(3, np.float32), "ids": [0, 1, 2]}, "expected rank 2"),
    ]
    for inputs, message in cases:
        with pytest.raises(RequestError, match=message):
            run_graph(g, inputs, w)


def test_run_graph_checks_weights() -> None:
    g, x = _two_input_graph(), np.ones((3, 4), np.float32)
    inputs = {"x": x, "y": x, "ids": [0, 1, 2]}
    with pytest.raises(CheckpointError, match=r"weight 'table' \(f32\[5,4\]\) is missing"):
        run_graph(g, inputs, {})
    with pytest.raises(CheckpointError, match=r"weight 'table': got shape \[5, 3\]"):
        run_graph(g, inputs, {"table": np.zeros((5, 3), np.float32)})


def test_run_graph_checks_kv_cache_inputs() -> None:
    b = GraphBuilder("g")
    kv = KVCacheType(1, 1, 2, DType.f32)
    x = b.input("x", TensorType(DType.f32, (1, 1, 2)))
    out = b.emit(ops.PagedAttention(), x, x, x, b.input("kv_cache", kv))
    with pytest.raises(RequestError, match=r"'kv_cache' must be a KV cache kvcache<layers=1"):
        run_graph(b.build({"out": out}), {"x": np.zeros((1, 1, 2), np.float32), "kv_cache": 3}, {})


def test_weights_are_fetched_lazily_once_and_freed_after_their_last_use() -> None:
    b = GraphBuilder("g")
    x = b.input("x", TensorType(DType.f32, (2, 3)))
    b.weight("unused", DType.f32, (3,))
    h = b.emit(ops.Linear(), x, b.weight("w1", DType.f32, (3, 3)))
    h = b.emit(ops.Linear(), h, b.weight("w1", DType.f32, (3, 3)))  # read twice
    h = b.emit(ops.Linear(), h, b.weight("w2", DType.f32, (3, 3)))
    fetched: list[str] = []
    alive: dict[str, weakref.ref] = {}

    def load(name: str) -> np.ndarray:
        if name == "w2":  # w1's last reader has run: the runner must have dropped it
            assert alive["w1"]() is None
        fetched.append(name)
        array = np.eye(3, dtype=np.float32) * 2
        alive[name] = weakref.ref(array)
        return array

    out = run_graph(b.build({"out": h}), {"x": np.ones((2, 3), np.float32)}, load)["out"]
    assert fetched == ["w1", "w2"]
    assert out.tolist() == [[8.0] * 3] * 2


def test_reshape_binds_symbolic_dims() -> None:
    b = GraphBuilder("g")
    x = b.input("x", TensorType(DType.f32, ("seq", 6)))
    y = b.emit(ops.Reshape(shape=("seq", 2, 3)), x)
    z = b.emit(ops.Reshape(shape=(-1, 6)), y)
    out = run_graph(
        b.build({"y": y, "z": z}), {"x": np.arange(12, dtype=np.float32).reshape(2, 6)}, {}
    )
    assert out["y"].shape == (2, 2, 3) and out["y"][1, 1, 2] == 11.0
    assert out["z"].shape == (2, 6)


def test_layout_ops_see_u4_values_unpacked() -> None:
    b = GraphBuilder("g")
    a, c = b.weight("a", DType.u4, (2, 4)), b.weight("c", DType.u4, (2, 2))
    joined = b.emit(ops.Concat(axis=-1), a, c)
    left, right = b.emit(ops.Split(axis=-1, sizes=(2, 4)), joined)
    va, vc = [[1, 2, 3, 4], [5, 6, 7, 8]], [[9, 10], [11, 12]]
    weights = {"a": pack_int4(np.array(va)), "c": pack_int4(np.array(vc))}
    out = run_graph(b.build({"joined": joined, "left": left, "right": right}), {}, weights)
    assert unpack_int4(out["joined"]).tolist() == [va[0] + vc[0], va[1] + vc[1]]
    assert unpack_int4(out["left"]).tolist() == [[1, 2], [5, 6]]
    assert unpack_int4(out["right"]).tolist() == [[3, 4, 9, 10], [7, 8, 11, 12]]


@pytest.mark.parametrize(("dtype", "tiny"), [(DType.bf16, 2.0**-9), (DType.f16, 2.0**-12)])
def test_low_precision_graphs_round_after_every_op(dtype: DType, tiny: float) -> None:
    """(1 + tiny) + tiny: tiny is under half an ulp of 1, so each sum rounds back to 1; f32 keeps both."""
    b = GraphBuilder("g")
    x = b.input("x", TensorType(dtype, (1,)))
    t = b.input("t", TensorType(dtype, (1,)))
    graph = b.build({"out": b.emit(ops.Add(), b.emit(ops.Add(), x, t), t)})
    inputs = {"x": np.ones(1, dtype.numpy), "t": np.full(1, tiny, dtype.numpy)}
    out = run_graph(graph, inputs, {})["out"]
    assert out.dtype == dtype.numpy and float(out[0]) == 1.0
    b32 = GraphBuilder("g")
    x32, t32 = (
        b32.input("x", TensorType(DType.f32, (1,))),
        b32.input("t", TensorType(DType.f32, (1,))),
    )
    f32 = b32.build({"out": b32.emit(ops.Add(), b32.emit(ops.Add(), x32, t32), t32)})
    inputs32 = {k: v.astype(np.float32) for k, v in inputs.items()}
    assert float(run_graph(f32, inputs32, {})["out"][0]) == 1.0 + 2 * tiny
