"""GGUF Q4_0 / Q4_1 kept int4 (load_gguf(keep_int4=True)) against gguf's own dequantize."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest

from ferrumc.errors import UnsupportedModel
from ferrumc.frontend.gguf import load_gguf
from ferrumc.frontend.gguf_int4 import q4_qweight, q4_scales, q4_zeros
from ferrumc.frontend.quant_summary import quantization_lines
from ferrumc.ir import ops
from ferrumc.ir.int4 import Int4Format
from ferrumc.ir.interpreter import dequantize_int4
from ferrumc.ir.reference import forward_logits
from ferrumc.ir.types import DType, TensorType
from ferrumc.passes.pipeline import optimize
from ferrumc.passes.select_logit_rows import SelectLogitRows
from ferrumc.tests.frontend.tiny_gguf import Q, TinyGGUF, write_tiny_gguf

PROMPT = [5, 17, 99, 3, 200, 42, 7]
RNG = np.random.default_rng(0)


def weights_with_flat_blocks() -> np.ndarray:
    w = RNG.normal(0, 0.5, (6, 128)).astype(np.float32)
    w[1, :32] = 0.25  # Q4_1: d = 0, m = 0.25 (a constant block)
    w[2, 32:64] = 0.0  # Q4_0 and Q4_1: d = 0
    w[3, 64:96] = -1.5
    return w


@pytest.mark.parametrize("qtype", [Q.Q4_0, Q.Q4_1], ids=lambda q: q.name)
def test_int4_codes_dequantize_as_gguf_does(qtype: Q) -> None:
    raw = gguf.quants.quantize(weights_with_flat_blocks(), qtype)
    reference = gguf.quants.dequantize(raw, qtype).astype(np.float32)
    q, scales = q4_qweight(raw, qtype, 6, 128), q4_scales(raw, qtype, 6, 128)
    zeros = q4_zeros(raw, qtype, 6, 128) if qtype == Q.Q4_1 else None
    assert q.shape == (6, 64) and scales.dtype == np.float16 and scales.shape == (6, 4)
    ours = dequantize_int4(q, scales, zeros, 32)
    if qtype == Q.Q4_0:  # d * (q - 8): the same product
        np.testing.assert_array_equal(ours, reference)
    else:  # d * (q + m / d) against d * q + m: one rounding apart
        np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-6)
        np.testing.assert_array_equal(ours[1, :32], reference[1, :32])  # constant blocks exact
        assert (reference[1, :32] == np.float32(0.25)).all()


@pytest.mark.parametrize(
    ("arch", "qtype"), [("llama", Q.Q4_0), ("llama", Q.Q4_1), ("qwen2", Q.Q4_1)]
)
def test_keep_int4_graph_matches_the_dequantized_model(arch: str, qtype: Q, tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    # One linear in F16 stays float; llama's q/k rows are un-permuted in int4 as in f32.
    write_tiny_gguf(
        path,
        TinyGGUF(arch=arch, storage=qtype, tied=False, overrides={"blk.1.attn_v.weight": Q.F16}),
    )
    dense, int4 = load_gguf(path), load_gguf(path, keep_int4=True)
    assert not dense.quantized  # the default is unchanged: everything dequantized
    fmt = Int4Format(32, symmetric=qtype == Q.Q4_0)
    assert {q.format for q in int4.quantized.values()} == {fmt}
    assert "lm_head" in int4.quantized and "layers.1.attn.v" not in int4.quantized
    # 7 linears a layer, minus one F16, plus lm_head and the embedding table.
    assert len(int4.quantized) == 2 * 7 + 1
    kind = f"GGUF {qtype.name}, {fmt}"
    assert quantization_lines(int4)[0] == f"quantization:  {kind}: 14 linears and the embedding"
    vocab = dense.config.vocab_size
    assert "embed.weight" not in int4.weights.types  # the lookup reads the int4 table
    assert int4.weights.types["embed.qweight"] == TensorType(DType.u4, (vocab, 64))
    assert int4.weights.types["layers.0.attn.q.qweight"] == TensorType(DType.u4, (64, 64))
    assert int4.weights.storage["layers.0.attn.q.qweight"] == qtype.name
    graph = int4.graph()
    assert int4.weights.types == graph.weight_types()
    assert graph.count(ops.Int4Linear) == 14 and graph.count(ops.Linear) == 1
    assert graph.count(ops.Int4Embedding) == 1 and graph.count(ops.Embedding) == 0
    want = forward_logits(dense.graph(), dense.weights.load, PROMPT)
    got = forward_logits(graph, int4.weights.load, PROMPT)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    # Fused: q/k and gate/up pairs (v, in F16, is float and stays apart in layer 1).
    module = optimize(graph)
    prefill = module.graphs["prefill"]
    assert prefill.count(ops.Int4Linear) == 14 - 2 - 1 - 2
    np.testing.assert_allclose(
        forward_logits(prefill, int4.weights.load, PROMPT), want, rtol=1e-4, atol=1e-4
    )
    # The int4 head computes only the rows asked for, as a float one does.
    selected = SelectLogitRows()(prefill)
    assert "logit_rows" in {n.op.name for n in selected.inputs}  # type: ignore[attr-defined]


def test_other_types_are_unaffected_and_unsupported_ones_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    write_tiny_gguf(path, TinyGGUF(storage=Q.Q8_0))
    assert not load_gguf(path, keep_int4=True).quantized
    q5k = {"blk.0.ffn_up.weight": Q.Q5_K}  # K-quants need rows of 256
    write_tiny_gguf(path, TinyGGUF(hidden=256, ffn=256, storage=Q.Q4_0, overrides=q5k))
    with pytest.raises(UnsupportedModel, match=r"'blk\.0\.ffn_up\.weight' is stored as Q5_K"):
        load_gguf(path, keep_int4=True)


@pytest.mark.parametrize("qtype", [Q.Q4_0, Q.Q4_1], ids=lambda q: q.name)
def test_a_tied_int4_embedding_feeds_the_lookup_and_the_output_head(
    qtype: Q, tmp_path: Path
) -> None:
    path = tmp_path / "m.gguf"
    write_tiny_gguf(path, TinyGGUF(arch="llama", storage=qtype, tied=True))
    dense, int4 = load_gguf(path), load_gguf(path, keep_int4=True)
    assert dense.config.tie_word_embeddings and "embed" in int4.quantized
    vocab = dense.config.vocab_size
    # One int4 table, no float one: the lookup gathers its rows, the head multiplies by it.
    assert int4.weights.types["embed.qweight"] == TensorType(DType.u4, (vocab, 64))
    assert not {"embed.weight", "lm_head.qweight"} & set(int4.weights.types)
    graph = int4.graph()
    assert int4.weights.types == graph.weight_types()
    assert graph.count(ops.Linear) == 0 and graph.count(ops.Int4Linear) == 2 * 7 + 1
    (lookup,) = [n for n in graph.nodes if isinstance(n.op, ops.Int4Embedding)]
    head = graph.outputs["logits"].node
    assert isinstance(head.op, ops.Int4Linear) and head.inputs[1:] == lookup.inputs[:-1]
    want = forward_logits(dense.graph(), dense.weights.load, PROMPT)
    got = forward_logits(graph, int4.weights.load, PROMPT)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("qtype", "tied"), [(Q.Q4_0, True), (Q.Q4_1, False)])
def test_an_int4_bundle_stores_no_float_embedding_and_matches_the_interpreter(
    qtype: Q, tied: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`ferrumc compile x.gguf -q int4`: the embedding table is stored as its int4 codes (plus
    scales), and the compiled prefill and decode give the interpreter's logits."""
    pytest.importorskip("tvm")
    from click.testing import CliRunner

    from ferrumc.cli import main
    from ferrumc.runtime.loader import open_bundle

    monkeypatch.setenv("FERRUMC_CACHE_DIR", str(tmp_path / "cache"))
    path, out = tmp_path / "m.gguf", tmp_path / "m.ferrum"
    write_tiny_gguf(path, TinyGGUF(arch="llama", storage=qtype, tied=tied))
    # Exact decode (x not rounded to int8), to compare with the interpreter's f32 math.
    argv = ["compile", str(path), "-q", "int4", "--int4-activations", "float", "-o", str(out)]
    result = CliRunner().invoke(main, argv)
    assert result.exit_code == 0, result.output
    bundle = open_bundle(out)
    params = {p.name: (p.dtype, tuple(p.shape)) for p in bundle.manifest.params}
    vocab = bundle.config.vocab_size
    assert "embed.weight" not in params and params["embed.qweight"] == ("u4", (vocab, 64))
    # Every [vocab, hidden] matrix is stored as int4 codes (the embedding's; lm_head's if untied).
    assert {dtype for dtype, shape in params.values() if shape == (vocab, 64)} == {"u4"}
    loaded = load_gguf(path, keep_int4=True)
    want = forward_logits(loaded.graph(), loaded.weights.load, [*PROMPT, 9])
    ex = bundle.executor
    ex.add_sequence(0)
    got = np.concatenate([ex.prefill([0], [PROMPT], last_only=False), ex.decode([0], [9])])
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * np.abs(want).max())
