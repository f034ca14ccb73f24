"""split-heads: Before/Expected, idempotence, cases it must leave alone, numerics."""

from __future__ import annotations

import numpy as np
import pytest

from ferrumc.passes.split_heads import SplitHeads

# A fused qkv projection of 2 query heads and 1 kv head of 4, as fuse-qkv leaves it.
BEFORE = """
graph forward(%x: f32[seq,8], %positions: i32[seq]) {
  %w = weight : f32[16,8]
  %0 = linear(%x, %w) has_bias=false : f32[seq,16]
  %1, %2, %3 = split(%0) axis=-1 sizes=[8,4,4] : f32[seq,8], f32[seq,4], f32[seq,4]
  %4 = reshape(%1) shape=[-1,2,4] : f32[seq,2,4]
  %5 = reshape(%2) shape=[-1,1,4] : f32[seq,1,4]
  %6 = reshape(%3) shape=[-1,1,4] : f32[seq,1,4]
  %7 = rotary(%4, %positions) theta=10000.0 rotary_dim=4 scaling=null : f32[seq,2,4]
  %8 = rotary(%5, %positions) theta=10000.0 rotary_dim=4 scaling=null : f32[seq,1,4]
  %9 = attention(%7, %8, %6) num_heads=2 num_kv_heads=1 scale=0.5 sliding_window=null : f32[seq,2,4]
  return y=%9
}
"""

EXPECTED = """
graph forward(%x: f32[seq,8], %positions: i32[seq]) {
  %w = weight : f32[16,8]
  %0 = linear(%x, %w) has_bias=false : f32[seq,16]
  %1 = reshape(%0) shape=[-1,4,4] : f32[seq,4,4]
  %2, %3, %4 = split(%1) axis=1 sizes=[2,1,1] : f32[seq,2,4], f32[seq,1,4], f32[seq,1,4]
  %5 = rotary(%2, %positions) theta=10000.0 rotary_dim=4 scaling=null : f32[seq,2,4]
  %6 = rotary(%3, %positions) theta=10000.0 rotary_dim=4 scaling=null : f32[seq,1,4]
  %7 = attention(%5, %6, %4) num_heads=2 num_kv_heads=1 scale=0.5 sliding_window=null : f32[seq,2,4]
  return y=%7
}
"""


def test_splits_after_reshaping_into_heads(passes):
    passes.check(SplitHeads(), BEFORE, EXPECTED)


def test_idempotent(passes):
    passes.check_idempotent(SplitHeads(), BEFORE)


def test_same_numerics(passes, rng):
    graph = passes.parse(BEFORE)
    inputs = {
        "x": rng.standard_normal((5, 8)).astype(np.float32),
        "positions": np.arange(5, dtype=np.int32),
    }
    passes.assert_same_outputs(graph, passes.apply(SplitHeads(), graph), inputs, atol=1e-6)


@pytest.mark.parametrize(
    "tail",
    [
        # a piece read by something other than a reshape (the gate/up split of an MLP)
        """%4 = reshape(%1) shape=[-1,2,4] : f32[seq,2,4]
  %5 = reshape(%2) shape=[-1,1,4] : f32[seq,1,4]
  %6 = silu(%3) : f32[seq,4]
  return a=%4, b=%5, c=%6""",
        # pieces cut into heads of different sizes
        """%4 = reshape(%1) shape=[-1,2,4] : f32[seq,2,4]
  %5 = reshape(%2) shape=[-1,2,2] : f32[seq,2,2]
  %6 = reshape(%3) shape=[-1,1,4] : f32[seq,1,4]
  return a=%4, b=%5, c=%6""",
        # a piece that is also a graph output
        """%4 = reshape(%1) shape=[-1,2,4] : f32[seq,2,4]
  %5 = reshape(%2) shape=[-1,1,4] : f32[seq,1,4]
  %6 = reshape(%3) shape=[-1,1,4] : f32[seq,1,4]
  return a=%4, b=%5, c=%6, d=%3""",
    ],
    ids=["other-reader", "different-head-dims", "graph-output"],
)
def test_leaves_other_splits_alone(passes, tail):
    passes.check_unchanged(
        SplitHeads(),
        f"""
graph forward(%x: f32[seq,8]) {{
  %w = weight : f32[16,8]
  %0 = linear(%x, %w) has_bias=false : f32[seq,16]
  %1, %2, %3 = split(%0) axis=-1 sizes=[8,4,4] : f32[seq,8], f32[seq,4], f32[seq,4]
  {tail}
}}
""",
    )
