"""GPTQ (and AWQ) checkpoints loaded as int4: synthetic tensors (tiny_gptq.py) against the float
model their formula means, through the numpy interpreter; fusion, f16, inspect; every refusal."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from safetensors.numpy import load_file, save_file

from ferrumc.cli import main
from ferrumc.errors import CheckpointError, UnsupportedModel
from ferrumc.frontend.awq import unpack_awq
from ferrumc.frontend.gptq import act_order_perm, unpack_along_cols, unpack_along_rows, zero_points
from ferrumc.frontend.hf import load_hf
from ferrumc.frontend.model import QuantizedLinear
from ferrumc.frontend.models import build_graph
from ferrumc.ir import ops
from ferrumc.ir.int4 import Int4Format, unpack_int4
from ferrumc.ir.reference import forward_logits
from ferrumc.ir.types import DType
from ferrumc.passes.pipeline import CompileOptions, optimize
from ferrumc.tests.frontend.tiny_gptq import (
    GPTQSpec,
    gptq_checkpoint,
    pack_awq,
    pack_cols,
    pack_rows,
)

PROMPT = [5, 17, 99, 3, 200, 42, 7]
LINEARS = [f"layers.{i}.{m}" for i in range(2) for m in ("attn.q", "attn.k", "attn.v", "attn.o")]
LINEARS += [f"layers.{i}.mlp.{m}" for i in range(2) for m in ("gate", "up", "down")]
RNG = np.random.default_rng(0)


def make(tiny_checkpoint, tmp_path: Path, spec: GPTQSpec, model: str = "llama_linear"):
    """(the loaded GPTQ model, the loaded float model of its dequantized weights)."""
    gptq = gptq_checkpoint(tiny_checkpoint(model), tmp_path / "gptq", spec, tmp_path / "ref")
    return load_hf(gptq), load_hf(tmp_path / "ref")


def test_unpacking_reads_gptq_words_low_bits_first() -> None:
    codes = RNG.integers(0, 16, (16, 8))
    assert (unpack_along_rows(pack_rows(codes)) == codes).all()
    assert (unpack_along_cols(pack_cols(codes)) == codes).all()
    word = np.array([[0x76543210]], np.uint32).view(np.int32)
    assert unpack_along_rows(word)[:, 0].tolist() == list(range(8))
    assert unpack_along_cols(word)[0].tolist() == list(range(8))


def test_v1_zero_points_are_stored_minus_one_with_borrows() -> None:
    z = np.array([[0, 15, 8, 1, 0, 0, 7, 15]])
    v1 = (pack_cols(z).view(np.uint32) - np.uint32(0x11111111)).view(np.int32)
    assert (zero_points(v1, "gptq") == z).all()
    assert (zero_points(pack_cols(z), "gptq_v2") == z).all()


def test_act_order_perm_makes_groups_contiguous_and_checks_group_sizes() -> None:
    assert act_order_perm(np.arange(8, dtype=np.int32) // 4, 4, "t") is None
    g_idx = np.array([1, 0, 1, 0, 0, 1, 1, 0], np.int32)
    perm = act_order_perm(g_idx, 4, "t")
    assert perm.tolist() == [1, 3, 4, 7, 0, 2, 5, 6]  # stable: original order inside a group
    with pytest.raises(
        CheckpointError, match="t: g_idx does not put 4 columns in each of 2 groups"
    ):
        act_order_perm(np.array([1, 0, 1, 0, 0, 0, 1, 0], np.int32), 4, "t")


SPECS = {
    "sym-v1": GPTQSpec(sym=True, version="gptq"),
    "asym-v1-act-order": GPTQSpec(sym=False, act_order=True, version="gptq"),
    "asym-v2-act-order-g64": GPTQSpec(group_size=64, sym=False, act_order=True, version="gptq_v2"),
    "sym-v2-act-order": GPTQSpec(sym=True, act_order=True, version="gptq_v2"),
    "asym-v2-own-g_idx": GPTQSpec(sym=False, act_order=True, version="gptq_v2", shared_g_idx=False),
}


@pytest.mark.parametrize("spec", SPECS.values(), ids=SPECS.keys())
def test_gptq_graph_matches_the_dequantized_float_model(spec, tiny_checkpoint, tmp_path) -> None:
    model, ref = make(tiny_checkpoint, tmp_path, spec)
    fmt = Int4Format(spec.group_size, spec.sym)
    assert set(model.quantized) == set(LINEARS)
    assert {q.format for q in model.quantized.values()} == {fmt}
    assert {q.scale_dtype for q in model.quantized.values()} == {DType.f16}
    graph = model.graph()
    assert graph.count(ops.Int4Linear) == len(LINEARS) and graph.count(ops.Linear) == 1  # lm_head
    assert model.weights.types == graph.weight_types()
    perms = {n: q.perm for n, q in model.quantized.items()}
    if not spec.act_order:
        assert set(perms.values()) == {None}
    elif spec.group_size == 64:  # K = 64 is one group: nothing to permute; down's K = 128 is two
        assert perms["layers.0.attn.q"] is None and perms["layers.0.mlp.gate"] is None
        assert perms["layers.0.mlp.down"] == "layers.0.mlp.down.perm"
    elif spec.shared_g_idx:  # q, k, v (gate, up) read one input and share its permutation
        assert perms["layers.1.attn.k"] == perms["layers.1.attn.v"] == "layers.1.attn.q.perm"
        assert perms["layers.0.mlp.up"] == "layers.0.mlp.gate.perm"
        assert perms["layers.0.mlp.down"] == "layers.0.mlp.down.perm"
    else:
        assert perms["layers.1.attn.k"] == "layers.1.attn.k.perm"
    want = forward_logits(ref.graph(), ref.weights.load, PROMPT)
    got = forward_logits(graph, model.weights.load, PROMPT)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    # The optimized module (q/k/v and gate/up fused where perms agree) means the same.
    module = optimize(graph)
    fused = module.graphs["prefill"].count(ops.Int4Linear)
    # 7 linears a layer become 4 (qkv, o, gate_up, down) unless their perms differ.
    assert fused == (8 if spec.shared_g_idx or not spec.act_order else 14)
    np.testing.assert_allclose(
        forward_logits(module.graphs["prefill"], model.weights.load, PROMPT),
        want,
        rtol=1e-4,
        atol=1e-4,
    )


def test_weights_are_integer_codes_moved_not_rounded(tiny_checkpoint, tmp_path) -> None:
    """The loaded qweight holds the checkpoint's codes, columns reordered by the perm."""
    spec = GPTQSpec(sym=False, act_order=True, version="gptq_v2")
    model, _ = make(tiny_checkpoint, tmp_path, spec)
    stored = load_file(tmp_path / "gptq" / "model.safetensors")
    p = "model.layers.0.self_attn.k_proj"
    codes = np.stack(
        [(stored[f"{p}.qweight"].view(np.uint32) >> (4 * j)) & 15 for j in range(8)], 1
    )
    codes = codes.reshape(-1, codes.shape[-1])  # [K, N]
    perm = model.weights.load(model.quantized["layers.0.attn.k"].perm)
    assert sorted(perm.tolist()) == list(range(codes.shape[0]))
    q = unpack_int4(model.weights.load("layers.0.attn.k.qweight"))
    assert (q == codes[perm].T).all()
    assert model.weights.load("layers.0.attn.k.scales").dtype == np.float16
    np.testing.assert_array_equal(
        model.weights.load("layers.0.attn.k.scales"), stored[f"{p}.scales"].T
    )


def test_qwen2_biases_stay_float(tiny_checkpoint, tmp_path) -> None:
    model, ref = make(tiny_checkpoint, tmp_path, GPTQSpec(sym=False, act_order=True), "qwen2")
    q = next(n for n in model.graph().nodes if isinstance(n.op, ops.Int4Linear))
    assert q.op.has_bias and q.op.has_perm
    want = forward_logits(ref.graph(), ref.weights.load, PROMPT)
    got = forward_logits(model.graph(), model.weights.load, PROMPT)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_legacy_quantize_config_json(tiny_checkpoint, tmp_path) -> None:
    path = gptq_checkpoint(tiny_checkpoint("llama_linear"), tmp_path / "m", GPTQSpec(sym=False))
    config = json.loads((path / "config.json").read_text())
    quant = config.pop("quantization_config")
    del quant["quant_method"]  # AutoGPTQ's quantize_config.json did not name the method
    (path / "config.json").write_text(json.dumps(config))
    (path / "quantize_config.json").write_text(json.dumps(quant))
    model = load_hf(path)
    assert model.quantized["layers.0.mlp.down"].format == Int4Format(32, symmetric=False)


def edit_config(path: Path, **changes: object) -> Path:
    config = json.loads((path / "config.json").read_text())
    config["quantization_config"].update(changes)
    (path / "config.json").write_text(json.dumps(config))
    return path


REFUSALS = [
    ({"bits": 8}, UnsupportedModel, "bits is 8; ferrumc loads 4-bit GPTQ checkpoints only"),
    ({"group_size": -1}, UnsupportedModel, "group_size -1 .one group per row. is not supported"),
    ({"group_size": 16}, UnsupportedModel, "group_size 16 is not supported; .* 32, 64, 128"),
    ({"quant_method": "bitsandbytes"}, UnsupportedModel, "quant_method 'bitsandbytes' is not"),
    ({"checkpoint_format": "marlin"}, UnsupportedModel, "checkpoint_format 'marlin' is not"),
    ({"pack_dtype": "int16"}, UnsupportedModel, "pack_dtype 'int16' is not supported"),
    ({"dynamic": {"-:.*down": {}}}, UnsupportedModel, "dynamic .per-module"),
    ({"rotation": "hadamard"}, UnsupportedModel, "rotation 'hadamard' .weights stored rotated."),
    ({"sym": "yes"}, CheckpointError, "sym must be bool, got 'yes'"),
    ({"sym": True}, CheckpointError, "says sym=true but the stored zero points are not all 8"),
    (
        {"group_size": 64},
        CheckpointError,
        r"\.scales in .* has shape \[\d+,\d+\], expected \[\d+,\d+\] from its qweight",
    ),
]


@pytest.mark.parametrize(("change", "error", "message"), REFUSALS)
def test_refusals_name_the_field(change, error, message, tiny_checkpoint, tmp_path) -> None:
    spec = GPTQSpec(sym=False, version="gptq_v2")
    path = gptq_checkpoint(tiny_checkpoint("llama_linear"), tmp_path / "m", spec)
    with pytest.raises(error, match=message):
        load_hf(edit_config(path, **change))


def test_missing_or_inconsistent_tensors_are_named(tiny_checkpoint, tmp_path) -> None:
    path = gptq_checkpoint(tiny_checkpoint("llama_linear"), tmp_path / "m", GPTQSpec())
    tensors = load_file(path / "model.safetensors")
    del tensors["model.layers.1.mlp.up_proj.qzeros"]
    g_idx = tensors["model.layers.0.mlp.down_proj.g_idx"]
    save_file(tensors, str(path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"model\.layers\.1\.mlp\.up_proj\.qzeros is missing"):
        load_hf(path)
    tensors["model.layers.1.mlp.up_proj.qzeros"] = tensors["model.layers.0.mlp.up_proj.qzeros"]
    tensors["model.layers.0.mlp.down_proj.g_idx"] = np.zeros_like(g_idx)
    save_file(tensors, str(path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"down_proj\.g_idx: g_idx does not put 32 columns"):
        load_hf(path)


def test_f16_compute_casts_scales_but_leaves_codes_and_perm_alone(
    tiny_checkpoint, tmp_path
) -> None:
    model, ref = make(tiny_checkpoint, tmp_path, GPTQSpec(sym=False, act_order=True))
    prefill = optimize(model.graph(), CompileOptions(dtype=DType.f16)).graphs["prefill"]
    cast = {
        n.inputs[0].node.op.name
        for n in prefill.nodes
        if isinstance(n.op, ops.Cast) and isinstance(n.inputs[0].node.op, ops.Weight)
    }
    assert not {n for n in cast if n.endswith((".qweight", ".perm"))}
    assert {t.dtype for n, t in prefill.weight_types().items() if n.endswith(".perm")} == {
        DType.i32
    }
    want = forward_logits(ref.graph(), ref.weights.load, PROMPT)
    got = forward_logits(prefill, model.weights.load, PROMPT)
    np.testing.assert_allclose(got, want, rtol=0, atol=0.05 * np.abs(want).max())


def test_inspect_shows_the_quantization(tiny_checkpoint, tmp_path) -> None:
    spec = GPTQSpec(sym=False, act_order=True, version="gptq_v2")
    path = gptq_checkpoint(tiny_checkpoint("llama_linear"), tmp_path / "m", spec)
    out = CliRunner().invoke(main, ["inspect", str(path)]).output
    assert "weights:       14 GPTQ v2 int4, 7 f32" in out, out
    assert (
        "quantization:  GPTQ v2, int4 group 32 asymmetric: 14 linears; act-order (perm) on 14"
        in out
    )
    assert "int4 bytes:    q 36.0 KiB, scales 4.5 KiB, zeros 9.0 KiB, perm 2.5 KiB" in out
    assert (
        out.split("float:")[1]
        .split("\n")[0]
        .endswith(
            "in embed.weight, layers.*.attn_norm.weight, layers.*.mlp_norm.weight, norm.weight, "
            "lm_head.weight"
        )
    )
    float_out = CliRunner().invoke(main, ["inspect", str(tiny_checkpoint("llama_linear"))]).output
    assert "quantization:  none" in float_out
    params = [o.split("parameters:")[1].split("\n")[0] for o in (out, float_out)]
    assert params[0] == params[1]  # an int4 linear counts its N x K weights, not its scales


def test_awq_words_interleave_columns() -> None:
    word = np.array([[0x76543210]], np.uint32).view(np.int32)  # nibble i holds i
    assert unpack_awq(word)[0].tolist() == [0, 4, 1, 5, 2, 6, 3, 7]
    codes = RNG.integers(0, 16, (4, 16))
    assert (unpack_awq(pack_awq(codes)) == codes).all()


def test_awq_gemm_graph_matches_the_dequantized_float_model(tiny_checkpoint, tmp_path) -> None:
    model, ref = make(tiny_checkpoint, tmp_path, GPTQSpec(sym=False, method="awq"))
    assert {(q.origin, q.format, q.perm) for q in model.quantized.values()} == {
        ("AWQ GEMM", Int4Format(32, symmetric=False), None)
    }
    want = forward_logits(ref.graph(), ref.weights.load, PROMPT)
    got = forward_logits(model.graph(), model.weights.load, PROMPT)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"version": "gemv"}, "AWQ version 'gemv' is not supported; supported: gemm"),
        ({"zero_point": False}, "AWQ without zero points is not supported"),
        ({"bits": None, "w_bit": 3}, "bits is 3; ferrumc loads 4-bit AWQ checkpoints only"),
    ],
)
def test_awq_refusals(change, message, tiny_checkpoint, tmp_path) -> None:
    spec = GPTQSpec(sym=False, method="awq")
    path = gptq_checkpoint(tiny_checkpoint("llama_linear"), tmp_path / "m", spec)
    with pytest.raises(UnsupportedModel, match=message):
        load_hf(edit_config(path, **change))


def test_quantized_experts_and_unknown_linears_are_refused(tiny_checkpoint, tmp_path) -> None:
    path = gptq_checkpoint(tiny_checkpoint("qwen3_moe"), tmp_path / "m", GPTQSpec(sym=False))
    assert load_hf(path).quantized  # attention and the dense MLP of layer 1 load
    tensors = load_file(path / "model.safetensors")
    expert = "model.layers.0.mlp.experts.0.gate_proj"
    dense = "model.layers.1.mlp.gate_proj"
    del tensors[f"{expert}.weight"]
    for part in ("qweight", "qzeros", "scales", "g_idx"):
        tensors[f"{expert}.{part}"] = tensors[f"{dense}.{part}"]
    save_file(tensors, str(path / "model.safetensors"))
    with pytest.raises(
        UnsupportedModel, match=r"experts\.0\.gate_proj\.qweight .* quantizes an MoE"
    ):
        load_hf(path)
    config = load_hf(tiny_checkpoint("llama")).config
    with pytest.raises(UnsupportedModel, match=r"layers\.7\.attn\.q is stored in int4 but is not"):
        build_graph(config, {"layers.7.attn.q": QuantizedLinear(Int4Format())})
    # Tied embeddings with an int4 head (a GGUF's Q4 embedding): the head reads the int4 copy.
    head = build_graph(config, {"lm_head": QuantizedLinear(Int4Format())})
    assert config.tie_word_embeddings and "lm_head.qweight" in head.weight_types()
