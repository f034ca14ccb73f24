"""cast-compute-dtype: Before/Expected per dtype, idempotence, no-op at f32, misuse, f16 numerics."""

from __future__ import annotations

import numpy as np
import pytest

from ferrumc.errors import PassError
from ferrumc.ir import DType
from ferrumc.passes.cast_compute_dtype import CastComputeDType

# As the frontends emit it: a bf16 checkpoint weight cast to f32 where it enters (tied embedding
# read twice), an f32 norm weight, i32 token ids; plus a float input.
BEFORE = """
graph forward(%tokens: i32[seq], %scale: f32[seq,8]) {
  %embed.weight = weight : bf16[16,8]
  %0 = cast(%embed.weight) dtype="f32" : f32[16,8]
  %1 = embedding(%0, %tokens) : f32[seq,8]
  %2 = mul(%1, %scale) : f32[seq,8]
  %norm.weight = weight : f32[8]
  %3 = rms_norm(%2, %norm.weight) eps=1e-06 : f32[seq,8]
  %4 = linear(%3, %0) has_bias=false : f32[seq,16]
  return logits=%4
}
"""

# Weights enter through one cast each (the f32 cast of embed.weight retargeted), logits back to f32.
EXPECTED_F16 = """
graph forward(%tokens: i32[seq], %scale: f32[seq,8]) {
  %0 = cast(%scale) dtype="f16" : f16[seq,8]
  %embed.weight = weight : bf16[16,8]
  %1 = cast(%embed.weight) dtype="f16" : f16[16,8]
  %2 = embedding(%1, %tokens) : f16[seq,8]
  %3 = mul(%2, %0) : f16[seq,8]
  %norm.weight = weight : f32[8]
  %4 = cast(%norm.weight) dtype="f16" : f16[8]
  %5 = rms_norm(%3, %4) eps=1e-06 : f16[seq,8]
  %6 = linear(%5, %1) has_bias=false : f16[seq,16]
  %7 = cast(%6) dtype="f32" : f32[seq,16]
  return logits=%7
}
"""

# bf16 is the checkpoint's own dtype: the weight cast becomes a no-op and disappears.
EXPECTED_BF16 = """
graph forward(%tokens: i32[seq], %scale: f32[seq,8]) {
  %0 = cast(%scale) dtype="bf16" : bf16[seq,8]
  %embed.weight = weight : bf16[16,8]
  %1 = embedding(%embed.weight, %tokens) : bf16[seq,8]
  %2 = mul(%1, %0) : bf16[seq,8]
  %norm.weight = weight : f32[8]
  %3 = cast(%norm.weight) dtype="bf16" : bf16[8]
  %4 = rms_norm(%2, %3) eps=1e-06 : bf16[seq,8]
  %5 = linear(%4, %embed.weight) has_bias=false : bf16[seq,16]
  %6 = cast(%5) dtype="f32" : f32[seq,16]
  return logits=%6
}
"""

# A GGUF Q4_1 embedding read in int4 by the lookup (and here a float head).
INT4_EMBEDDING = """
graph forward(%tokens: i32[seq]) {
  %embed.qweight = weight : u4[16,64]
  %embed.scales = weight : f16[16,2]
  %embed.zeros = weight : f32[16,2]
  %0 = int4_embedding(%embed.qweight, %embed.scales, %embed.zeros, %tokens) group_size=32 has_zeros=true dtype="f32" : f32[seq,64]
  %lm_head.weight = weight : f32[16,64]
  %1 = linear(%0, %lm_head.weight) has_bias=false : f32[seq,16]
  return logits=%1
}
"""

# The lookup produces bf16 itself; its scales and zeros are read as stored, uncast.
EXPECTED_INT4_EMBEDDING_BF16 = """
graph forward(%tokens: i32[seq]) {
  %embed.qweight = weight : u4[16,64]
  %embed.scales = weight : f16[16,2]
  %embed.zeros = weight : f32[16,2]
  %0 = int4_embedding(%embed.qweight, %embed.scales, %embed.zeros, %tokens) group_size=32 has_zeros=true dtype="bf16" : bf16[seq,64]
  %lm_head.weight = weight : f32[16,64]
  %1 = cast(%lm_head.weight) dtype="bf16" : bf16[16,64]
  %2 = linear(%0, %1) has_bias=false : bf16[seq,16]
  %3 = cast(%2) dtype="f32" : f32[seq,16]
  return logits=%3
}
"""

PAGED = """
graph prefill(%q: f32[seq,2,4], %kv_cache: kvcache<layers=1,kv_heads=1,head_dim=4,f32>) {
  %0 = paged_attention(%q, %q, %q, %kv_cache) layer=0 num_heads=2 num_kv_heads=2 scale=0.5 sliding_window=null form="prefill" : f32[seq,2,4]
  return out=%0
}
"""

EXPECTED_PAGED = """
graph prefill(%q: f32[seq,2,4], %kv_cache: kvcache<layers=1,kv_heads=2,head_dim=4,f16>) {
  %0 = cast(%q) dtype="f16" : f16[seq,2,4]
  %1 = paged_attention(%0, %0, %0, %kv_cache) layer=0 num_heads=2 num_kv_heads=2 scale=0.5 sliding_window=null form="prefill" : f16[seq,2,4]
  %2 = cast(%1) dtype="f32" : f32[seq,2,4]
  return out=%2
}
"""


def test_f16(passes):
    passes.check(CastComputeDType(DType.f16), BEFORE, EXPECTED_F16)


def test_bf16_drops_no_op_casts(passes):
    passes.check(CastComputeDType(DType.bf16), BEFORE, EXPECTED_BF16)


def test_back_to_f32_restores_the_graph(passes):
    passes.check(CastComputeDType(DType.f32), EXPECTED_F16, BEFORE)


def test_int4_embedding_computes_in_dtype_from_stored_scales(passes):
    passes.check(CastComputeDType(DType.bf16), INT4_EMBEDDING, EXPECTED_INT4_EMBEDDING_BF16)
    passes.check_idempotent(CastComputeDType(DType.bf16), INT4_EMBEDDING)


def test_retypes_the_kv_cache(passes):
    before = PAGED.replace("kv_heads=1", "kv_heads=2")
    passes.check(CastComputeDType(DType.f16), before, EXPECTED_PAGED)


@pytest.mark.parametrize("dtype", [DType.f16, DType.bf16, DType.f32])
def test_idempotent(passes, dtype):
    passes.check_idempotent(CastComputeDType(dtype), BEFORE)


def test_f32_graph_at_f32_is_unchanged(passes):
    passes.check_unchanged(
        CastComputeDType(DType.f32),
        """
        graph forward(%tokens: i32[seq]) {
          %embed.weight = weight : f32[16,8]
          %0 = embedding(%embed.weight, %tokens) : f32[seq,8]
          %norm.weight = weight : f32[8]
          %1 = rms_norm(%0, %norm.weight) eps=1e-06 : f32[seq,8]
          %2 = linear(%1, %embed.weight) has_bias=false : f32[seq,16]
          return logits=%2
        }
        """,
    )


def test_rejects_integer_dtypes():
    with pytest.raises(
        PassError, match=r"cast-compute-dtype: dtype i32 .* use one of f32, f16, bf16"
    ):
        CastComputeDType(DType.i32)


def test_f16_numerics_are_f16_like(passes, rng):
    graph = passes.parse(BEFORE)
    inputs = {
        "tokens": rng.integers(0, 16, 6).astype(np.int32),
        "scale": rng.standard_normal((6, 8)).astype(np.float32),
    }
    weights = passes.weights(graph)
    want = passes.run(graph, inputs, weights)["logits"]
    got = passes.run(passes.apply(CastComputeDType(DType.f16), graph), inputs, weights)["logits"]
    assert got.dtype == np.float32
    rel = np.abs(got - want).max() / np.abs(want).max()
    # Rounded to f16 (eps 2^-10 ~ 1e-3) along the way: close, but not f32-exact.
    assert 1e-6 < rel < 1e-2
