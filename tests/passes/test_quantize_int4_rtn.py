"""quantize-int4-rtn: Before/Expected, idempotence, what it leaves alone, and the numerics of the
quantized weights against a dequantization written out here in numpy."""

from __future__ import annotations

import numpy as np
import pytest

from ferrumc.errors import PassError
from ferrumc.ir import Module
from ferrumc.ir.int4 import Int4Format
from ferrumc.ir.interpreter import run_graph
from ferrumc.passes.lift_weight_transforms import lift_weight_transforms
from ferrumc.passes.quantize_int4_rtn import QuantizeInt4RTN

BEFORE = """
graph forward(%x: f32[seq,64]) {
  %layers.0.up.weight = weight : f32[32,64]
  %0 = linear(%x, %layers.0.up.weight) has_bias=false : f32[seq,32]
  %layers.0.down.weight = weight : f32[64,32]
  %layers.0.down.bias = weight : f32[64]
  %1 = linear(%0, %layers.0.down.weight, %layers.0.down.bias) has_bias=true : f32[seq,64]
  %lm_head.weight = weight : f32[16,64]
  %2 = linear(%1, %lm_head.weight) has_bias=false : f32[seq,16]
  return logits=%2
}
"""

# The output head stays float; the bias rides along on the int4 linear; scales are f16.
EXPECTED = """
graph forward(%x: f32[seq,64]) {
  %layers.0.up.weight = weight : f32[32,64]
  %0, %1 = quantize_int4(%layers.0.up.weight) group_size=32 symmetric=true dtype="f16" : u4[32,64], f16[32,2]
  %2 = int4_linear(%x, %0, %1) group_size=32 has_zeros=false has_perm=false has_bias=false swiglu=false : f32[seq,32]
  %layers.0.down.weight = weight : f32[64,32]
  %layers.0.down.bias = weight : f32[64]
  %3, %4 = quantize_int4(%layers.0.down.weight) group_size=32 symmetric=true dtype="f16" : u4[64,32], f16[64,1]
  %5 = int4_linear(%2, %3, %4, %layers.0.down.bias) group_size=32 has_zeros=false has_perm=false has_bias=true swiglu=false : f32[seq,64]
  %lm_head.weight = weight : f32[16,64]
  %6 = linear(%5, %lm_head.weight) has_bias=false : f32[seq,16]
  return logits=%6
}
"""

# A fused (concatenated) bf16 weight: quantized as one matrix, scales and zeros in bf16.
BEFORE_FUSED = """
graph forward(%x: bf16[seq,64]) {
  %a.weight = weight : bf16[32,64]
  %b.weight = weight : bf16[32,64]
  %0 = concat(%a.weight, %b.weight) axis=0 : bf16[64,64]
  %1 = linear(%x, %0) has_bias=false : bf16[seq,64]
  return h=%1
}
"""

EXPECTED_FUSED = """
graph forward(%x: bf16[seq,64]) {
  %a.weight = weight : bf16[32,64]
  %b.weight = weight : bf16[32,64]
  %0 = concat(%a.weight, %b.weight) axis=0 : bf16[64,64]
  %1, %2, %3 = quantize_int4(%0) group_size=64 symmetric=false dtype="bf16" : u4[64,64], bf16[64,1], bf16[64,1]
  %4 = int4_linear(%x, %1, %2, %3) group_size=64 has_zeros=true has_perm=false has_bias=false swiglu=false : bf16[seq,64]
  return h=%4
}
"""

ASYMMETRIC_64 = QuantizeInt4RTN(Int4Format(64, symmetric=False))


def test_quantizes_linears_but_not_the_output_head(passes):
    passes.check(QuantizeInt4RTN(), BEFORE, EXPECTED)


def test_quantizes_a_fused_weight_as_one_matrix(passes):
    passes.check(ASYMMETRIC_64, BEFORE_FUSED, EXPECTED_FUSED)


def test_idempotent(passes):
    passes.check_idempotent(QuantizeInt4RTN(), BEFORE)
    passes.check_idempotent(ASYMMETRIC_64, BEFORE_FUSED)


def test_leaves_run_time_weights_int4_linears_heads_and_routers_alone(passes):
    passes.check_unchanged(
        QuantizeInt4RTN(),
        """
        graph forward(%x: f32[seq,64], %w: f32[8,64]) {
          %0 = linear(%x, %w) has_bias=false : f32[seq,8]
          %a.q = weight : u4[8,64]
          %a.scales = weight : f32[8,2]
          %1 = int4_linear(%x, %a.q, %a.scales) group_size=32 : f32[seq,8]
          %router.weight = weight : f32[4,64]
          %2 = linear(%x, %router.weight) has_bias=false : f32[seq,4]
          %3, %4 = moe_route(%2) top_k=2 normalize=true : f32[seq,2], i32[seq,2]
          %embed.weight = weight : f32[16,64]
          %5 = linear(%x, %embed.weight) has_bias=false : f32[seq,16]
          %6 = add(%0, %1) : f32[seq,8]
          return h=%6, w=%3, logits=%5
        }
        """,
    )


def test_group_size_not_dividing_the_input_dim_names_the_weight(passes):
    graph = passes.parse(
        """
        graph forward(%x: f32[seq,96]) {
          %layers.3.mlp.down.weight = weight : f32[8,96]
          %0 = linear(%x, %layers.3.mlp.down.weight) has_bias=false : f32[seq,8]
          return h=%0
        }
        """
    )
    with pytest.raises(
        PassError, match=r"layers\.3\.mlp\.down\.weight has 96 input columns.*--group-size 32"
    ):
        QuantizeInt4RTN(Int4Format(64))(graph)


def dequantize(packed: np.ndarray, scales: np.ndarray, zeros: np.ndarray | None, g: int):
    """Written out independently of ir/: low nibble first, w = scale * (q - zero), zero 8 if none."""
    n = packed.shape[0]
    codes = np.empty((n, packed.shape[1] * 2), np.int64)
    for j in range(packed.shape[1]):
        codes[:, 2 * j] = packed[:, j] % 16
        codes[:, 2 * j + 1] = packed[:, j] // 16
    col_group = np.arange(codes.shape[1]) // g
    zero = 8.0 if zeros is None else zeros.astype(np.float64)[:, col_group]
    return codes, scales.astype(np.float64)[:, col_group] * (codes - zero)


@pytest.mark.parametrize("group_size", [32, 128])
@pytest.mark.parametrize("symmetric", [True, False])
def test_weights_within_half_a_scale_and_the_linear_computes_with_them(
    passes, rng, group_size, symmetric
):
    graph = passes.parse(
        """
        graph forward(%x: f32[seq,256]) {
          %up.weight = weight : f32[128,256]
          %0 = linear(%x, %up.weight) has_bias=false : f32[seq,128]
          return h=%0
        }
        """
    )
    w = rng.standard_normal((128, 256)).astype(np.float32)
    w[:, 5] *= 20  # an outlier column widens its groups' scales
    w[3, :group_size] = 0  # an all-zero group
    if not symmetric:
        w[7] = np.abs(w[7]) + 1  # a row of positive weights: its range still holds 0
    after = QuantizeInt4RTN(Int4Format(group_size, symmetric))(graph)
    module, transforms = lift_weight_transforms(Module({"forward": after}))
    weights = {"up.weight": w}
    data = {name: run_graph(t, {}, weights)[name] for name, t in transforms.items()}
    assert sorted(data) == ["up.weight.q4", "up.weight.scales"] + (
        [] if symmetric else ["up.weight.zeros"]
    )
    packed, scales = data["up.weight.q4"], data["up.weight.scales"]
    assert packed.dtype == np.uint8 and packed.shape == (128, 128)
    assert scales.shape == (128, 256 // group_size) and (scales > 0).all()
    codes, deq = dequantize(packed, scales, data.get("up.weight.zeros"), group_size)
    assert codes.max() - codes.min() >= 14  # the range is used (ties at the extremes aside)
    half_scale = scales.astype(np.float64)[:, np.arange(256) // group_size] / 2
    assert (np.abs(deq - w) <= half_scale * (1 + 1e-5)).all()
    assert (deq[3, :group_size] == 0).all()
    if not symmetric:
        zeros = data["up.weight.zeros"]
        assert ((zeros >= 0) & (zeros <= 15)).all()
    x = rng.standard_normal((5, 256)).astype(np.float32)
    got = run_graph(module.graphs["forward"], {"x": x}, {**weights, **data})["h"]
    np.testing.assert_allclose(got, x.astype(np.float64) @ deq.T, rtol=1e-4, atol=1e-4)
