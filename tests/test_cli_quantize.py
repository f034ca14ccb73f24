"""`ferrumc compile -q int4 ...`: flags that do not apply are usage errors naming them, a group
size the model cannot take names the tensor, and the optimized IR shows the chosen int4."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from ferrumc.cli import main
from ferrumc.ir import parse_module, verify_module


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--group-size", "64"], ["--group-size", "-q int4"]),
        (["--quantizer", "gptq", "--act-order"], ["--quantizer, --act-order", "-q int4"]),
        (["-q", "int4", "--act-order"], ["--act-order", "--quantizer gptq"]),
        (["-q", "int4", "--calibration", "{file}"], ["--calibration", "--quantizer gptq"]),
        (["-q", "int4", "--group-size", "48"], ["--group-size", "'48' is not one of"]),
    ],
)
def test_flags_that_do_not_apply_are_usage_errors(tiny_checkpoint, tmp_path, args, needles):
    text = tmp_path / "text.txt"
    text.write_text("Some calibration text.")
    args = [a.replace("{file}", str(text)) for a in args]
    result = invoke("compile", str(tiny_checkpoint("llama")), "--emit-ir", *args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in result.output, result.output


def test_group_size_the_model_cannot_take_names_the_tensor(tiny_checkpoint):
    # The tiny models are 64 wide: no group of 128 fits the q/k/v input.
    result = invoke(
        "compile", str(tiny_checkpoint("llama")), "--emit-ir", "-q", "int4", "--group-size", "128"
    )
    assert result.exit_code == 1
    assert result.output.startswith(
        "error: pass quantize-int4-rtn: layers.0.attn.qkv.weight has 64"
    )
    assert "use --group-size 32" in result.output


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ([], ["quantize_int4(", "group_size=32 symmetric=true", "has_zeros=false"]),
        (
            ["--scheme", "asymmetric", "--group-size", "64"],
            ["group_size=64 symmetric=false", "has_zeros=true"],
        ),
        # GPTQ's codes are computed in the pass: weights, not a quantize op.
        (
            ["--quantizer", "gptq", "--act-order"],
            ["%layers.0.mlp.down.weight.q4 = weight : u4[64,128]"],
        ),
    ],
    ids=["rtn", "rtn-asymmetric-g64", "gptq-act-order"],
)
def test_emit_ir_shows_the_int4_linears(tiny_checkpoint, args, expected):
    result = invoke("compile", str(tiny_checkpoint("llama")), "--emit-ir", "-q", "int4", *args)
    assert result.exit_code == 0, result.output
    assert sorted(verify_module(parse_module(result.output)).graphs) == ["decode", "prefill"]
    # Per graph (prefill, decode) and layer (2): qkv, o, gate_up and down; the head stays float.
    assert result.output.count(" = int4_linear(") == 2 * 2 * 4
    assert result.output.count(" = linear(") == 2
    for needle in expected:
        assert needle in result.output, needle


def test_int4_bundle_matches_the_interpreter_and_inspect_shows_it(
    tiny_checkpoint, tmp_path, monkeypatch
):
    """Compile -q int4 end to end: the bundle's logits are the interpreter's on the same int4
    graph (weights quantized once at compile time), and `inspect` reports the format."""
    pytest.importorskip("tvm")
    from ferrumc.frontend.resolve import load_model
    from ferrumc.ir import Module, ops
    from ferrumc.ir.int4 import Int4Format
    from ferrumc.ir.interpreter import KERNELS, run_graph
    from ferrumc.passes.lift_weight_transforms import lift_weight_transforms
    from ferrumc.passes.manager import run_passes
    from ferrumc.passes.pipeline import CompileOptions, common_passes
    from ferrumc.passes.quantization import Int4Quantization
    from ferrumc.runtime.loader import open_bundle

    model, bundle = tiny_checkpoint("llama"), tmp_path / "int4.ferrum"
    args = ["-q", "int4", "--scheme", "asymmetric", "--group-size", "64"]
    result = invoke("compile", str(model), *args, "-o", str(bundle))
    assert result.exit_code == 0, result.output
    result = invoke("inspect", str(bundle))
    assert result.exit_code == 0, result.output
    assert "quantization:  int4 group 64 asymmetric (rtn)" in result.output
    assert "u4 8 (" in result.output  # qkv, o, gate_up and down of 2 layers
    assert "int4 linears:  x rounded to int8" in result.output  # the default
    assert "KV cache:      f32, " in result.output  # the compute dtype, the default

    ids = np.arange(3, 40, dtype=np.int32)
    executor = open_bundle(bundle).executor
    executor.add_sequence(0)
    got = executor.prefill([0], [ids.tolist()], last_only=False)

    loaded = load_model(str(model))
    quantize = Int4Quantization(Int4Format(64, symmetric=False))
    graph = run_passes(loaded.graph(), common_passes(CompileOptions(quantize=quantize)))
    module, transforms = lift_weight_transforms(Module({"forward": graph}))
    derived = {n: run_graph(t, {}, loaded.weights.load)[n] for n, t in transforms.items()}
    inputs = {"tokens": ids, "positions": np.arange(len(ids), dtype=np.int32)}
    weights = lambda n: derived[n] if n in derived else loaded.weights.load(n)  # noqa: E731
    # The bundle's linears round x to int8 per 32 inputs (the default): so does the reference.
    monkeypatch.setitem(KERNELS, ops.Int4Linear, _with_int8_x(KERNELS[ops.Int4Linear]))
    want = run_graph(module.graphs["forward"], inputs, weights)["logits"]
    assert np.abs(got - want).max() < 1e-3


def _with_int8_x(int4_linear):
    """The interpreter's int4 linear on x rounded as the int8-x kernels round it (no act-order
    here): per block of 32 inputs, to the nearest of the 255 steps of its largest |x| / 127."""

    def rounded(op, x, q, scales, *rest):
        assert not op.has_perm
        blocks = x.astype(np.float32).reshape(*x.shape[:-1], -1, 32)
        amax = np.abs(blocks).max(axis=-1, keepdims=True)
        inv = np.where(amax > 0, np.float32(127) / np.where(amax > 0, amax, 1), 0)
        v = blocks * inv.astype(np.float32)
        codes = np.where(v < 0, -np.floor(-v + 0.5), np.floor(v + 0.5))  # half away from 0
        xr = (codes * (amax / np.float32(127))).reshape(x.shape).astype(x.dtype)
        return int4_linear(op, xr, q, scales, *rest)

    return rounded


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["-q", "int4"],
        ["-q", "int4", "--group-size", "128", "--scheme", "asymmetric"],
        ["-q", "int4", "--quantizer", "gptq", "--act-order", "--calibration", "{file}"],
        ["-q", "int4", "--int4-activations", "float"],
        ["--int4-activations", "float"],
        ["-q", "int4", "--kv-dtype", "f16"],
    ],
)
def test_a_bad_bundles_recompile_hint_repeats_the_quantization(tmp_path, args):
    """The hint's flags, parsed back by the CLI, give the options the manifest records."""
    import shlex

    from ferrumc.cli import int4_choice
    from ferrumc.codegen.bundle import option_flags
    from ferrumc.codegen.compile import options_record
    from ferrumc.ir.types import DType
    from ferrumc.passes.pipeline import CompileOptions

    text = tmp_path / "text.txt"
    text.write_text("Some calibration text.")
    args = [a.replace("{file}", str(text)) for a in args]

    def choose(argv: list[str]):
        """What `ferrumc compile MODEL ARGV` would quantize with, parsed by the CLI itself."""
        params = main.commands["compile"].make_context("compile", ["MODEL", *argv]).params
        keys = ("quantize", "group_size", "scheme", "quantizer", "act_order", "calibration")
        quantize = int4_choice(**{k: params[k] for k in keys})
        kv = DType(params["kv_dtype"]) if params["kv_dtype"] else None
        x = params["int4_activations"]
        return options_record(CompileOptions(DType.f32, quantize, x, kv_dtype=kv))

    record = choose(args)
    assert choose(shlex.split(option_flags(record))) == record
