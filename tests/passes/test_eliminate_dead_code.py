"""eliminate-dead-code: Before/Expected, idempotence, a live graph left alone, numerics."""

from __future__ import annotations

import numpy as np

from ferrumc.passes.eliminate_dead_code import EliminateDeadCode

# %unused is an input nobody reads (inputs are the signature: kept); %1 and its weight are dead.
BEFORE = """
graph forward(%x: f32[seq,8], %unused: i32[seq]) {
  %a.weight = weight : f32[4,8]
  %0 = linear(%x, %a.weight) has_bias=false : f32[seq,4]
  %b.weight = weight : f32[4,8]
  %1 = linear(%x, %b.weight) has_bias=false : f32[seq,4]
  %2 = silu(%1) : f32[seq,4]
  %3 = silu(%0) : f32[seq,4]
  return y=%3
}
"""

EXPECTED = """
graph forward(%x: f32[seq,8], %unused: i32[seq]) {
  %a.weight = weight : f32[4,8]
  %0 = linear(%x, %a.weight) has_bias=false : f32[seq,4]
  %1 = silu(%0) : f32[seq,4]
  return y=%1
}
"""


def test_drops_dead_nodes_and_weights(passes):
    passes.check(EliminateDeadCode(), BEFORE, EXPECTED)


def test_idempotent(passes):
    passes.check_idempotent(EliminateDeadCode(), BEFORE)


def test_leaves_live_graph_alone(passes):
    passes.check_unchanged(EliminateDeadCode(), EXPECTED)


def test_same_numerics(passes, rng):
    graph = passes.parse(BEFORE)
    inputs = {"x": rng.standard_normal((3, 8)).astype(np.float32), "unused": np.zeros(3, np.int32)}
    passes.assert_same_outputs(graph, passes.apply(EliminateDeadCode(), graph), inputs, atol=0.0)
