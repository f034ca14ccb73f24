"""select-logit-rows: Before/Expected, idempotence, graphs it leaves alone, numerics."""

from __future__ import annotations

import numpy as np

from ferrumc.passes.select_logit_rows import SelectLogitRows

BEFORE = """
graph prefill(%x: f16[seq,8]) {
  %norm.weight = weight : f16[8]
  %0 = rms_norm(%x, %norm.weight) eps=1e-06 : f16[seq,8]
  %embed.weight = weight : f16[12,8]
  %1 = linear(%0, %embed.weight) has_bias=false : f16[seq,12]
  %2 = cast(%1) dtype="f32" : f32[seq,12]
  return logits=%2
}
"""

EXPECTED = """
graph prefill(%x: f16[seq,8], %logit_rows: i32[rows]) {
  %norm.weight = weight : f16[8]
  %0 = rms_norm(%x, %norm.weight) eps=1e-06 : f16[seq,8]
  %embed.weight = weight : f16[12,8]
  %1 = embedding(%0, %logit_rows) : f16[rows,8]
  %2 = linear(%1, %embed.weight) has_bias=false : f16[rows,12]
  %3 = cast(%2) dtype="f32" : f32[rows,12]
  return logits=%3
}
"""


def test_gathers_the_rows_before_the_vocabulary_projection(passes):
    passes.check(SelectLogitRows(), BEFORE, EXPECTED)


def test_idempotent(passes):
    passes.check_idempotent(SelectLogitRows(), BEFORE)


def test_leaves_graphs_without_a_logits_projection_alone(passes):
    passes.check_unchanged(
        SelectLogitRows(),
        """
        graph prefill(%x: f32[seq,8]) {
          %0 = silu(%x) : f32[seq,8]
          return logits=%0
        }
        """,
    )


def test_rows_match_the_full_logits(passes, rng):
    before = passes.parse(BEFORE)
    after = passes.apply(SelectLogitRows(), before)
    weights = passes.weights(before)
    x = rng.standard_normal((5, 8)).astype(np.float16)
    full = passes.run(before, {"x": x}, weights)["logits"]
    rows = np.array([4, 1], dtype=np.int32)
    picked = passes.run(after, {"x": x, "logit_rows": rows}, weights)["logits"]
    assert np.array_equal(picked, full[rows])
