"""lift-weight-transforms: lifted graph and transforms as text, sharing across a module, naming,
idempotence, a graph with nothing to lift, and numerics (transforms run by the interpreter)."""

from __future__ import annotations

import textwrap

import numpy as np

from ferrumc.ir import Module, print_graph, print_module
from ferrumc.ir.interpreter import run_graph
from ferrumc.passes.lift_weight_transforms import derive_name, lift_weight_transforms

# A cast norm weight, the fused q/k/v cast as a whole, and one output of a split of it (a
# multi-output weight-only node); the lm_head is a plain weight and stays as it is.
BEFORE = """
graph forward(%x: f32[seq,8]) {
  %layers.0.attn_norm.weight = weight : bf16[8]
  %0 = cast(%layers.0.attn_norm.weight) dtype="f32" : f32[8]
  %1 = rms_norm(%x, %0) eps=1e-06 : f32[seq,8]
  %layers.0.attn.q.weight = weight : bf16[8,8]
  %layers.0.attn.k.weight = weight : bf16[4,8]
  %layers.0.attn.v.weight = weight : bf16[4,8]
  %2 = concat(%layers.0.attn.q.weight, %layers.0.attn.k.weight, %layers.0.attn.v.weight) axis=0 : bf16[16,8]
  %3 = cast(%2) dtype="f32" : f32[16,8]
  %4 = linear(%1, %3) has_bias=false : f32[seq,16]
  %5, %6 = split(%3) axis=0 sizes=[8,8] : f32[8,8], f32[8,8]
  %7 = linear(%1, %6) has_bias=false : f32[seq,8]
  %lm_head.weight = weight : f32[4,16]
  %8 = linear(%4, %lm_head.weight) has_bias=false : f32[seq,4]
  return logits=%8, h=%7
}
"""

EXPECTED = """
graph forward(%x: f32[seq,8]) {
  %layers.0.attn_norm.weight.f32 = weight : f32[8]
  %0 = rms_norm(%x, %layers.0.attn_norm.weight.f32) eps=1e-06 : f32[seq,8]
  %layers.0.attn.qkv.weight.f32 = weight : f32[16,8]
  %1 = linear(%0, %layers.0.attn.qkv.weight.f32) has_bias=false : f32[seq,16]
  %layers.0.attn.qkv.weight.f32.split.1 = weight : f32[8,8]
  %2 = linear(%0, %layers.0.attn.qkv.weight.f32.split.1) has_bias=false : f32[seq,8]
  %lm_head.weight = weight : f32[4,16]
  %3 = linear(%1, %lm_head.weight) has_bias=false : f32[seq,4]
  return logits=%3, h=%2
}
"""

EXPECTED_QKV_TRANSFORM = """
graph layers.0.attn.qkv.weight.f32() {
  %layers.0.attn.q.weight = weight : bf16[8,8]
  %layers.0.attn.k.weight = weight : bf16[4,8]
  %layers.0.attn.v.weight = weight : bf16[4,8]
  %0 = concat(%layers.0.attn.q.weight, %layers.0.attn.k.weight, %layers.0.attn.v.weight) axis=0 : bf16[16,8]
  %1 = cast(%0) dtype="f32" : f32[16,8]
  return layers.0.attn.qkv.weight.f32=%1
}
"""


def _module(passes, *names: str) -> Module:
    return Module({n: passes.parse(BEFORE.replace("forward", n)) for n in names})


def test_lifts_weight_only_values(passes):
    module, transforms = lift_weight_transforms(_module(passes, "forward"))
    assert print_module(module) == textwrap.dedent(EXPECTED).lstrip("\n")
    assert sorted(transforms) == [
        "layers.0.attn.qkv.weight.f32",
        "layers.0.attn.qkv.weight.f32.split.1",
        "layers.0.attn_norm.weight.f32",
    ]
    qkv = print_graph(transforms["layers.0.attn.qkv.weight.f32"])
    assert qkv == textwrap.dedent(EXPECTED_QKV_TRANSFORM).lstrip("\n")


def test_same_transform_in_two_graphs_is_computed_once(passes):
    module, transforms = lift_weight_transforms(_module(passes, "prefill", "decode"))
    assert len(transforms) == 3
    prefill, decode = module.graphs["prefill"], module.graphs["decode"]
    assert prefill.weight_types() == decode.weight_types()


def test_derived_names_avoid_checkpoint_names(passes):
    taken = """
    graph other(%x: f32[seq,8]) {
      %layers.0.attn_norm.weight.f32 = weight : f32[8]
      %0 = rms_norm(%x, %layers.0.attn_norm.weight.f32) eps=1e-06 : f32[seq,8]
      return y=%0
    }
    """
    module = _module(passes, "forward")
    module.graphs["other"] = passes.parse(taken)
    _, transforms = lift_weight_transforms(module)
    assert "layers.0.attn_norm.weight.f32.2" in transforms
    assert "layers.0.attn_norm.weight.f32" not in transforms


def test_derive_name(passes):
    g = passes.parse(
        """
        graph g(%x: f32[seq,8]) {
          %layers.1.mlp.gate.weight = weight : f32[6,8]
          %layers.1.mlp.up.weight = weight : f32[6,8]
          %0 = concat(%layers.1.mlp.gate.weight, %layers.1.mlp.up.weight) axis=0 : f32[12,8]
          %1 = transpose(%0) perm=[1,0] : f32[8,12]
          %2 = concat(%layers.1.mlp.up.weight, %layers.1.mlp.up.weight) axis=0 : f32[12,8]
          return a=%0, b=%1, c=%2
        }
        """
    )
    assert derive_name(g.outputs["a"]) == "layers.1.mlp.gate_up.weight"
    assert derive_name(g.outputs["b"]) == "layers.1.mlp.gate_up.weight.transpose"
    assert derive_name(g.outputs["c"]) == "layers.1.mlp.up.weight.concat"


def test_idempotent(passes):
    once, _ = lift_weight_transforms(_module(passes, "forward"))
    twice, transforms = lift_weight_transforms(once)
    assert transforms == {}
    assert print_module(twice) == print_module(once)


def test_nothing_to_lift(passes):
    module = Module({"forward": passes.parse(EXPECTED)})
    lifted, transforms = lift_weight_transforms(module)
    assert transforms == {}
    assert print_module(lifted) == print_module(module)


def test_derived_weights_reproduce_the_graph(passes, rng):
    module = _module(passes, "forward")
    lifted, transforms = lift_weight_transforms(module)
    weights = passes.weights(module)
    derived = dict(weights)
    for name, transform in transforms.items():
        derived[name] = run_graph(transform, {}, weights)[name]
    x = {"x": rng.standard_normal((4, 8)).astype(np.float32)}
    want = run_graph(module.graphs["forward"], x, weights)
    got = run_graph(lifted.graphs["forward"], x, derived)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name])
