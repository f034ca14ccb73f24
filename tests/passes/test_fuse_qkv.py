"""fuse-qkv: Before/Expected, idempotence, cases it must leave alone, and numerics."""

from __future__ import annotations

import numpy as np

from ferrumc.passes.fuse_qkv import FuseQKV

# Weights declared just before their linear, as the frontends emit them: the fused linear stands
# where q stood, so k's and v's weights must be pulled forward.
BEFORE = """
graph forward(%x: f32[seq,8]) {
  %layers.0.attn.q.weight = weight : f32[8,8]
  %0 = linear(%x, %layers.0.attn.q.weight) has_bias=false : f32[seq,8]
  %layers.0.attn.k.weight = weight : f32[4,8]
  %1 = linear(%x, %layers.0.attn.k.weight) has_bias=false : f32[seq,4]
  %2 = mul(%1, %1) : f32[seq,4]
  %layers.0.attn.v.weight = weight : f32[4,8]
  %3 = linear(%x, %layers.0.attn.v.weight) has_bias=false : f32[seq,4]
  %4 = add(%2, %3) : f32[seq,4]
  return q=%0, kv=%4
}
"""

EXPECTED = """
graph forward(%x: f32[seq,8]) {
  %layers.0.attn.q.weight = weight : f32[8,8]
  %layers.0.attn.k.weight = weight : f32[4,8]
  %layers.0.attn.v.weight = weight : f32[4,8]
  %0 = concat(%layers.0.attn.q.weight, %layers.0.attn.k.weight, %layers.0.attn.v.weight) axis=0 : f32[16,8]
  %1 = linear(%x, %0) has_bias=false : f32[seq,16]
  %2, %3, %4 = split(%1) axis=-1 sizes=[8,4,4] : f32[seq,8], f32[seq,4], f32[seq,4]
  %5 = mul(%3, %3) : f32[seq,4]
  %6 = add(%5, %4) : f32[seq,4]
  return q=%2, kv=%6
}
"""

# qwen2: biases on q, k, v; weights stored bf16 and cast where they enter (weight-only values).
BEFORE_BIAS = """
graph forward(%x: f32[seq,8]) {
  %q.weight = weight : bf16[8,8]
  %0 = cast(%q.weight) dtype="f32" : f32[8,8]
  %q.bias = weight : f32[8]
  %1 = linear(%x, %0, %q.bias) has_bias=true : f32[seq,8]
  %k.weight = weight : bf16[4,8]
  %2 = cast(%k.weight) dtype="f32" : f32[4,8]
  %k.bias = weight : f32[4]
  %3 = linear(%x, %2, %k.bias) has_bias=true : f32[seq,4]
  return q=%1, k=%3
}
"""

EXPECTED_BIAS = """
graph forward(%x: f32[seq,8]) {
  %q.weight = weight : bf16[8,8]
  %0 = cast(%q.weight) dtype="f32" : f32[8,8]
  %q.bias = weight : f32[8]
  %k.weight = weight : bf16[4,8]
  %1 = cast(%k.weight) dtype="f32" : f32[4,8]
  %2 = concat(%0, %1) axis=0 : f32[12,8]
  %k.bias = weight : f32[4]
  %3 = concat(%q.bias, %k.bias) axis=0 : f32[12]
  %4 = linear(%x, %2, %3) has_bias=true : f32[seq,12]
  %5, %6 = split(%4) axis=-1 sizes=[8,4] : f32[seq,8], f32[seq,4]
  return q=%5, k=%6
}
"""


def test_fuses_linears_sharing_an_input(passes):
    passes.check(FuseQKV(), BEFORE, EXPECTED)


def test_fuses_biases_and_cast_weights(passes):
    passes.check(FuseQKV(), BEFORE_BIAS, EXPECTED_BIAS)


def test_idempotent(passes):
    passes.check_idempotent(FuseQKV(), BEFORE)
    passes.check_idempotent(FuseQKV(), BEFORE_BIAS)


def test_leaves_single_linear_alone(passes):
    passes.check_unchanged(
        FuseQKV(),
        """
        graph forward(%x: f32[seq,8], %y: f32[seq,8]) {
          %a.weight = weight : f32[4,8]
          %0 = linear(%x, %a.weight) has_bias=false : f32[seq,4]
          %1 = linear(%y, %a.weight) has_bias=false : f32[seq,4]
          return a=%0, b=%1
        }
        """,
    )


def test_leaves_mixed_bias_run_time_weights_and_lm_head_alone(passes):
    passes.check_unchanged(
        FuseQKV(),
        """
        graph forward(%x: f32[seq,8], %w: f32[4,8]) {
          %a.weight = weight : f32[4,8]
          %a.bias = weight : f32[4]
          %0 = linear(%x, %a.weight, %a.bias) has_bias=true : f32[seq,4]
          %b.weight = weight : f32[4,8]
          %1 = linear(%x, %b.weight) has_bias=false : f32[seq,4]
          %2 = linear(%x, %w) has_bias=false : f32[seq,4]
          %lm_head.weight = weight : f32[16,8]
          %3 = linear(%x, %lm_head.weight) has_bias=false : f32[seq,16]
          %4 = add(%0, %1) : f32[seq,4]
          %5 = add(%4, %2) : f32[seq,4]
          return h=%5, logits=%3
        }
        """,
    )


def test_same_numerics(passes, rng):
    for before in (BEFORE, BEFORE_BIAS):
        graph = passes.parse(before)
        x = rng.standard_normal((5, 8)).astype(np.float32)
        passes.assert_same_outputs(graph, passes.apply(FuseQKV(), graph), {"x": x}, atol=1e-5)
