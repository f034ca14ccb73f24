"""quantize-int4-gptq on a tiny random checkpoint: the codes respect the int4 format, and GPTQ's
layer output error on held-out activations is below round-to-nearest's at the same group size."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from ferrumc.errors import PassError
from ferrumc.frontend.resolve import load_model
from ferrumc.ir import Module, print_graph
from ferrumc.ir.graph import Graph, live_nodes, rebuild
from ferrumc.ir.int4 import Int4Format
from ferrumc.ir.interpreter import run_graph
from ferrumc.passes.base import PassContext
from ferrumc.passes.calibration import (
    HELDOUT,
    pass_context,
    read_text,
    token_windows,
    weight_value,
)
from ferrumc.passes.lift_weight_transforms import derive_name, lift_weight_transforms
from ferrumc.passes.manager import run_passes
from ferrumc.passes.pipeline import CompileOptions, common_passes
from ferrumc.passes.quantization import GPTQOptions, Int4Quantization
from ferrumc.passes.quantize_int4_gptq import QuantizeInt4GPTQ
from ferrumc.passes.quantize_int4_rtn import QuantizeInt4RTN, quantizable_linears

# 1024 calibration tokens: enough for a stable Hessian of the widest input (128 columns).
CALIBRATION = GPTQOptions(num_sequences=8, sequence_length=128)


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    """The tiny llama and its optimized float graph (fused qkv and gate_up), before int4, with
    a cache of GPTQ results (several tests read the same ones)."""
    loaded = load_model(str(tiny_checkpoint("llama")))
    return loaded, run_passes(loaded.graph(), common_passes(CompileOptions())), {}


def gptq_weights(model, fmt: Int4Format, options: GPTQOptions = CALIBRATION):
    loaded, graph, cache = model
    if (fmt, options) not in cache:
        ctx = pass_context(loaded)
        cache[fmt, options] = QuantizeInt4GPTQ(fmt, options)(graph, ctx), ctx.derived
    return cache[fmt, options]


def rtn_weights(model, fmt: Int4Format) -> dict[str, np.ndarray]:
    loaded, graph, _ = model
    _, transforms = lift_weight_transforms(Module({"f": QuantizeInt4RTN(fmt)(graph)}))
    return {name: run_graph(t, {}, loaded.weights.load)[name] for name, t in transforms.items()}


def dequantize(weights: dict[str, np.ndarray], base: str, g: int) -> np.ndarray:
    """w = scale * (q - zero), nibbles low first, zero 8 without zeros (written out, not ir/'s)."""
    packed = weights[f"{base}.q4"].astype(np.int64)
    codes = np.stack([packed % 16, packed // 16], axis=-1).reshape(packed.shape[0], -1)
    zeros = weights.get(f"{base}.zeros")
    zero = 8.0 if zeros is None else np.repeat(zeros.astype(np.float64), g, axis=1)
    return np.repeat(weights[f"{base}.scales"].astype(np.float64), g, axis=1) * (codes - zero)


def heldout_activations(model, fmt: Int4Format) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """For each quantized linear (by weight name): (W, X) with X its inputs on held-out text."""
    loaded, graph, _ = model
    targets = quantizable_linears(graph, fmt, QuantizeInt4RTN(fmt))
    probe = Graph(graph.name, graph.nodes, {derive_name(t.inputs[1]): t.inputs[0] for t in targets})
    probe = rebuild(probe, keep=live_nodes(probe))
    tokenize = pass_context(loaded).tokenize
    xs: dict[str, list[np.ndarray]] = {name: [] for name in probe.outputs}
    for ids in token_windows(tokenize(read_text(HELDOUT)), 128, 4):
        out = run_graph(
            probe, {"tokens": ids, "positions": np.arange(128, dtype=np.int32)}, loaded.weights.load
        )
        for name in xs:
            xs[name].append(out[name])
    weights = {
        derive_name(t.inputs[1]): weight_value(graph, t.inputs[1], loaded.weights.load)
        for t in targets
    }
    return {name: (weights[name], np.concatenate(xs[name])) for name in xs}


@pytest.mark.parametrize(
    "fmt", [Int4Format(32), Int4Format(64, symmetric=False)], ids=["g32-sym", "g64-asym"]
)
@pytest.mark.parametrize("act_order", [False, True], ids=["", "act-order"])
def test_gptq_beats_rtn_on_held_out_activations(model, fmt, act_order):
    _, gptq = gptq_weights(model, fmt, replace(CALIBRATION, act_order=act_order))
    rtn = rtn_weights(model, fmt)
    ratios = {}
    for name, (w, x) in heldout_activations(model, fmt).items():
        err_gptq = np.linalg.norm(x @ (w - dequantize(gptq, name, fmt.group_size)).T)
        err_rtn = np.linalg.norm(x @ (w - dequantize(rtn, name, fmt.group_size)).T)
        ratios[name] = err_gptq / err_rtn
    assert len(ratios) == 8  # qkv, o, gate_up, down in each of 2 layers
    assert max(ratios.values()) < 1, ratios
    assert np.mean(list(ratios.values())) < 0.9, ratios


@pytest.mark.parametrize("symmetric", [True, False])
def test_codes_scales_and_zeros_respect_the_format(model, symmetric):
    fmt = Int4Format(32, symmetric)
    after, derived = gptq_weights(model, fmt)
    text = print_graph(after)
    assert "int4_linear" in text and "quantize_int4" not in text
    assert after.count(type(after.outputs["logits"].node.op)) == 1  # only the head stays float
    parts = {"q4", "scales"} | (set() if symmetric else {"zeros"})
    bases = {name.rsplit(".", 1)[0] for name in derived}
    assert {name.rsplit(".", 1)[1] for name in derived} == parts
    types = after.weight_types()
    for base in bases:
        packed, scales = derived[f"{base}.q4"], derived[f"{base}.scales"]
        n, k = types[f"{base}.q4"].shape
        assert packed.dtype == np.uint8 and packed.shape == (n, k // 2)
        assert scales.dtype == np.float16 and scales.shape == (n, k // 32) and (scales > 0).all()
        if not symmetric:
            zeros = derived[f"{base}.zeros"]
            assert zeros.shape == scales.shape and ((zeros >= 0) & (zeros <= 15)).all()
    # The graph runs on the derived weights and reads no float matrix of a quantized linear.
    ids = np.arange(1, 30, dtype=np.int32)
    loaded, _, _ = model
    inputs = {"tokens": ids, "positions": np.arange(len(ids), dtype=np.int32)}
    dead_free = rebuild(after, keep=live_nodes(after))
    assert not {"layers.0.attn.q.weight", "layers.0.mlp.down.weight"} & set(
        dead_free.weight_types()
    )
    weights = PassContext(load_weight=loaded.weights.load, derived=derived)
    logits = run_graph(dead_free, inputs, lambda n: weights.weight(n, by="test"))["logits"]
    assert np.isfinite(logits).all()


def test_act_order_changes_the_codes_but_not_the_layout(model):
    fmt = Int4Format(32)
    plain, plain_w = gptq_weights(model, fmt)
    ordered, ordered_w = gptq_weights(model, fmt, replace(CALIBRATION, act_order=True))
    assert print_graph(plain) == print_graph(ordered)  # no permutation input
    name = "layers.0.mlp.down.weight.q4"
    assert not np.array_equal(plain_w[name], ordered_w[name])


def test_idempotent(model):
    after, _ = gptq_weights(model, Int4Format(32))
    # Nothing left to quantize: runs without weights or tokenizer and changes nothing.
    again = QuantizeInt4GPTQ(Int4Format(32), CALIBRATION)(after, PassContext())
    assert print_graph(again) == print_graph(after)


def test_needs_a_tokenizer_and_enough_calibration_text(model, tmp_path: Path):
    loaded, graph, _ = model
    with pytest.raises(PassError, match="no tokenizer"):
        QuantizeInt4GPTQ()(graph, PassContext(load_weight=loaded.weights.load))
    short = tmp_path / "short.txt"
    short.write_text("Too short.")
    options = GPTQOptions(calibration=short)
    with pytest.raises(PassError, match=r"short\.txt has \d+ tokens, fewer than one sequence"):
        QuantizeInt4GPTQ(options=options)(graph, pass_context(loaded))


def test_the_record_names_the_calibration_text_by_content(tmp_path: Path):
    """What the manifest and the compile cache's key hold: another text is another bundle."""
    text = tmp_path / "text.txt"
    text.write_text("One text.")
    gptq = Int4Quantization(Int4Format(64), "gptq", GPTQOptions(act_order=True, calibration=text))
    first = gptq.record()
    assert first["quantizer"] == "gptq" and first["act_order"] and first["group_size"] == 64
    text.write_text("Another text.")
    assert gptq.record()["calibration_sha256"] != first["calibration_sha256"]
    shipped = Int4Quantization(quantizer="gptq").record()
    assert shipped["calibration"] == "shipped"
    assert "calibration" not in Int4Quantization().record()  # rtn reads no text
    with pytest.raises(PassError, match="gptq quantizer only"):
        Int4Quantization(gptq=GPTQOptions(act_order=True))
