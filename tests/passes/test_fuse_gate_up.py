"""fuse-gate-up: dense and MoE Before/Expected, idempotence, cases it must leave alone, numerics."""

from __future__ import annotations

import numpy as np
import pytest

from ferrumc.passes.fuse_gate_up import FuseGateUp

# up declared before gate and mul(up, act(gate)): the fused weight still puts gate rows first.
BEFORE = """
graph forward(%x: f32[seq,8]) {
  %layers.0.mlp.up.weight = weight : f32[6,8]
  %0 = linear(%x, %layers.0.mlp.up.weight) has_bias=false : f32[seq,6]
  %layers.0.mlp.gate.weight = weight : f32[6,8]
  %1 = linear(%x, %layers.0.mlp.gate.weight) has_bias=false : f32[seq,6]
  %2 = silu(%1) : f32[seq,6]
  %3 = mul(%0, %2) : f32[seq,6]
  %layers.0.mlp.down.weight = weight : f32[8,6]
  %4 = linear(%3, %layers.0.mlp.down.weight) has_bias=false : f32[seq,8]
  return y=%4
}
"""

EXPECTED = """
graph forward(%x: f32[seq,8]) {
  %layers.0.mlp.up.weight = weight : f32[6,8]
  %layers.0.mlp.gate.weight = weight : f32[6,8]
  %0 = concat(%layers.0.mlp.gate.weight, %layers.0.mlp.up.weight) axis=0 : f32[12,8]
  %1 = linear(%x, %0) has_bias=false : f32[seq,12]
  %2, %3 = split(%1) axis=-1 sizes=[6,6] : f32[seq,6], f32[seq,6]
  %4 = silu(%2) : f32[seq,6]
  %5 = mul(%3, %4) : f32[seq,6]
  %layers.0.mlp.down.weight = weight : f32[8,6]
  %6 = linear(%5, %layers.0.mlp.down.weight) has_bias=false : f32[seq,8]
  return y=%6
}
"""

BEFORE_MOE = """
graph forward(%x: f32[seq,8]) {
  %layers.0.moe.router.weight = weight : f32[4,8]
  %0 = linear(%x, %layers.0.moe.router.weight) has_bias=false : f32[seq,4]
  %1, %2 = moe_route(%0) top_k=2 normalize=true : f32[seq,2], i32[seq,2]
  %layers.0.moe.gate.weight = weight : f32[4,6,8]
  %layers.0.moe.up.weight = weight : f32[4,6,8]
  %layers.0.moe.down.weight = weight : f32[4,8,6]
  %3 = moe_experts(%x, %1, %2, %layers.0.moe.gate.weight, %layers.0.moe.up.weight, %layers.0.moe.down.weight) fused_gate_up=false : f32[seq,8]
  return y=%3
}
"""

EXPECTED_MOE = """
graph forward(%x: f32[seq,8]) {
  %layers.0.moe.router.weight = weight : f32[4,8]
  %0 = linear(%x, %layers.0.moe.router.weight) has_bias=false : f32[seq,4]
  %1, %2 = moe_route(%0) top_k=2 normalize=true : f32[seq,2], i32[seq,2]
  %layers.0.moe.gate.weight = weight : f32[4,6,8]
  %layers.0.moe.up.weight = weight : f32[4,6,8]
  %layers.0.moe.down.weight = weight : f32[4,8,6]
  %3 = concat(%layers.0.moe.gate.weight, %layers.0.moe.up.weight) axis=1 : f32[4,12,8]
  %4 = moe_experts(%x, %1, %2, %3, %layers.0.moe.down.weight) fused_gate_up=true : f32[seq,8]
  return y=%4
}
"""


def test_fuses_dense_gate_up(passes):
    passes.check(FuseGateUp(), BEFORE, EXPECTED)


def test_fuses_moe_experts(passes):
    passes.check(FuseGateUp(), BEFORE_MOE, EXPECTED_MOE)


@pytest.mark.parametrize("before", [BEFORE, BEFORE_MOE], ids=["dense", "moe"])
def test_idempotent(passes, before):
    passes.check_idempotent(FuseGateUp(), before)


def test_leaves_other_products_alone(passes):
    # No activation on either side; and a gated pair reading two different inputs.
    passes.check_unchanged(
        FuseGateUp(),
        """
        graph forward(%x: f32[seq,8], %y: f32[seq,8]) {
          %a.weight = weight : f32[6,8]
          %0 = linear(%x, %a.weight) has_bias=false : f32[seq,6]
          %b.weight = weight : f32[6,8]
          %1 = linear(%x, %b.weight) has_bias=false : f32[seq,6]
          %2 = mul(%0, %1) : f32[seq,6]
          %3 = linear(%y, %b.weight) has_bias=false : f32[seq,6]
          %4 = silu(%0) : f32[seq,6]
          %5 = mul(%4, %3) : f32[seq,6]
          %6 = add(%2, %5) : f32[seq,6]
          return y=%6
        }
        """,
    )


def test_leaves_fused_experts_alone(passes):
    passes.check_unchanged(FuseGateUp(), EXPECTED_MOE)


@pytest.mark.parametrize("before", [BEFORE, BEFORE_MOE], ids=["dense", "moe"])
def test_same_numerics(passes, rng, before):
    graph = passes.parse(before)
    x = rng.standard_normal((5, 8)).astype(np.float32)
    passes.assert_same_outputs(graph, passes.apply(FuseGateUp(), graph), {"x": x}, atol=1e-5)
