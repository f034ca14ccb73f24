"""fuse-add-rmsnorm: Before/Expected, idempotence, cases it must leave alone, numerics."""

from __future__ import annotations

import numpy as np

from ferrumc.passes.fuse_add_rmsnorm import FuseAddRMSNorm

# The sum %0 has a user before the norm (so the fused op stands where the add stood), and the
# second sum %3 is also returned (it comes from the second output).
BEFORE = """
graph forward(%x: f32[seq,8], %r: f32[seq,8]) {
  %0 = add(%x, %r) : f32[seq,8]
  %1 = mul(%0, %0) : f32[seq,8]
  %layers.0.mlp_norm.weight = weight : f32[8]
  %2 = rms_norm(%0, %layers.0.mlp_norm.weight) eps=1e-05 : f32[seq,8]
  %3 = add(%2, %1) : f32[seq,8]
  %norm.weight = weight : f32[8]
  %4 = rms_norm(%3, %norm.weight) eps=1e-06 : f32[seq,8]
  return y=%4, s=%3
}
"""

EXPECTED = """
graph forward(%x: f32[seq,8], %r: f32[seq,8]) {
  %layers.0.mlp_norm.weight = weight : f32[8]
  %0, %1 = add_rms_norm(%x, %r, %layers.0.mlp_norm.weight) eps=1e-05 : f32[seq,8], f32[seq,8]
  %2 = mul(%1, %1) : f32[seq,8]
  %norm.weight = weight : f32[8]
  %3, %4 = add_rms_norm(%0, %2, %norm.weight) eps=1e-06 : f32[seq,8], f32[seq,8]
  return y=%3, s=%4
}
"""


def test_fuses_add_then_norm(passes):
    passes.check(FuseAddRMSNorm(), BEFORE, EXPECTED)


def test_idempotent(passes):
    passes.check_idempotent(FuseAddRMSNorm(), BEFORE)


def test_leaves_plain_norms_and_broadcasting_adds_alone(passes):
    passes.check_unchanged(
        FuseAddRMSNorm(),
        """
        graph forward(%x: f32[seq,8], %b: f32[8]) {
          %norm.weight = weight : f32[8]
          %0 = rms_norm(%x, %norm.weight) eps=1e-06 : f32[seq,8]
          %1 = add(%0, %b) : f32[seq,8]
          %2 = rms_norm(%1, %norm.weight) eps=1e-06 : f32[seq,8]
          return y=%2
        }
        """,
    )


def test_same_numerics(passes, rng):
    graph = passes.parse(BEFORE)
    inputs = {n: rng.standard_normal((5, 8)).astype(np.float32) for n in ("x", "r")}
    passes.assert_same_outputs(graph, passes.apply(FuseAddRMSNorm(), graph), inputs, atol=1e-5)
