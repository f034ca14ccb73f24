"""fuse-swiglu: Before/Expected, idempotence, numerics, and the chains it must leave alone."""

from __future__ import annotations

import numpy as np
import pytest

from ferrumc.passes.fuse_swiglu import FuseSwiGLU

HEAD = """
graph forward(%x: f32[seq,32]) {
  %q = weight : u4[16,32]
  %s = weight : f32[16,1]
  %0 = int4_linear(%x, %q, %s) group_size=32 has_zeros=false has_perm=false has_bias=false swiglu=false : f32[seq,16]
  %1, %2 = split(%0) axis=-1 sizes=[8,8] : f32[seq,8], f32[seq,8]
"""

BEFORE = (
    HEAD
    + """  %3 = silu(%1) : f32[seq,8]
  %4 = mul(%3, %2) : f32[seq,8]
  return y=%4
}
"""
)

EXPECTED = """
graph forward(%x: f32[seq,32]) {
  %q = weight : u4[16,32]
  %s = weight : f32[16,1]
  %0 = int4_linear(%x, %q, %s) group_size=32 has_zeros=false has_perm=false has_bias=false swiglu=true : f32[seq,8]
  return y=%0
}
"""


def test_folds_silu_and_product_into_the_linear(passes):
    passes.check(FuseSwiGLU(), BEFORE, EXPECTED)


def test_product_in_either_order(passes):
    swapped = BEFORE.replace("mul(%3, %2)", "mul(%2, %3)")
    passes.check(FuseSwiGLU(), swapped, EXPECTED)


def test_idempotent(passes):
    passes.check_idempotent(FuseSwiGLU(), BEFORE)


def test_same_numerics(passes, rng):
    before = passes.parse(BEFORE)
    inputs = {"x": rng.standard_normal((5, 32)).astype(np.float32)}
    weights = {  # u4 weights arrive packed, two codes a byte
        "q": rng.integers(0, 256, (16, 16), dtype=np.uint8),
        "s": (rng.uniform(0.5, 1.5, (16, 1)) / 16).astype(np.float32),
    }
    passes.assert_same_outputs(before, passes.apply(FuseSwiGLU(), before), inputs, 0.0, weights)


@pytest.mark.parametrize(
    "tail",
    [
        # silu on the second piece: the epilogue reads the gate from the first rows
        """%3 = silu(%2) : f32[seq,8]
  %4 = mul(%3, %1) : f32[seq,8]
  return y=%4""",
        # the gate also read elsewhere
        """%3 = silu(%1) : f32[seq,8]
  %4 = mul(%3, %2) : f32[seq,8]
  return y=%4, g=%1""",
        # the activation also read elsewhere
        """%3 = silu(%1) : f32[seq,8]
  %4 = mul(%3, %2) : f32[seq,8]
  %5 = add(%4, %3) : f32[seq,8]
  return y=%5""",
        # another activation
        """%3 = gelu(%1) approximate="none" : f32[seq,8]
  %4 = mul(%3, %2) : f32[seq,8]
  return y=%4""",
    ],
    ids=["silu-on-up", "gate-read-twice", "silu-read-twice", "gelu"],
)
def test_leaves_other_chains_alone(passes, tail):
    passes.check_unchanged(FuseSwiGLU(), HEAD + "  " + tail + "\n}\n")


def test_leaves_float_linears_and_uneven_splits_alone(passes):
    float_linear = """
graph forward(%x: f32[seq,32]) {
  %w = weight : f32[16,32]
  %0 = linear(%x, %w) has_bias=false : f32[seq,16]
  %1, %2 = split(%0) axis=-1 sizes=[8,8] : f32[seq,8], f32[seq,8]
  %3 = silu(%1) : f32[seq,8]
  %4 = mul(%3, %2) : f32[seq,8]
  return y=%4
}
"""
    passes.check_unchanged(FuseSwiGLU(), float_linear)
    uneven = HEAD.replace(
        "sizes=[8,8] : f32[seq,8], f32[seq,8]", "sizes=[4,12] : f32[seq,4], f32[seq,12]"
    )
    passes.check_unchanged(
        FuseSwiGLU(),
        uneven + "  %3 = silu(%1) : f32[seq,4]\n  return a=%3, b=%2\n}\n",
    )
