"""config.json -> DecoderConfig: both transformers forms, every architecture's fields, every refusal."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ferrumc.errors import CheckpointError, UnsupportedModel
from ferrumc.frontend.hf_config import load_hf_config, parse_hf_config
from ferrumc.ir.rope import RopeScaling
from ferrumc.ir.types import DType
from ferrumc.tests.tiny_checkpoints import TINY_MODELS, model_config

SRC = Path("/ckpt/config.json")


def parse(raw: dict) -> object:
    return parse_hf_config(raw, SRC)


def to_5x(raw: dict) -> dict:
    """The transformers 5 spelling of a 4.x config: rope_parameters holding rope_theta, dtype."""
    out = dict(raw)
    rope = dict(out.pop("rope_scaling", None) or {"rope_type": "default"})
    rope["rope_theta"] = out.pop("rope_theta", 10000.0)
    out["rope_parameters"] = rope
    out["dtype"] = out.pop("torch_dtype")
    return out


def to_4x(raw: dict) -> dict:
    """The transformers 4 spelling of a 5.x config, with the legacy `type` key for the kind."""
    out = dict(raw)
    rope = dict(out.pop("rope_parameters"))
    out["rope_theta"] = rope.pop("rope_theta")
    kind = rope.pop("rope_type")
    out["rope_scaling"] = None if kind == "default" else {"type": kind, **rope}
    out["torch_dtype"] = out.pop("dtype")
    return out


@pytest.mark.parametrize("name", ["llama", "qwen2"])
def test_4x_and_5x_forms_agree_4x_source(name: str) -> None:
    raw = model_config(name, "bf16")
    assert "rope_scaling" in raw and "torch_dtype" in raw
    assert parse(raw) == parse(to_5x(raw))


@pytest.mark.parametrize("name", ["llama_linear", "mistral", "qwen3", "qwen3_moe"])
def test_4x_and_5x_forms_agree_5x_source(name: str) -> None:
    raw = model_config(name, "f16")
    assert parse(raw) == parse(to_4x(raw))


def test_llama_fields() -> None:
    c = parse(model_config("llama", "bf16"))
    assert (c.model_type, c.vocab_size, c.hidden_size, c.num_layers) == ("llama", 256, 64, 2)
    assert (c.num_heads, c.num_kv_heads, c.head_dim, c.intermediate_size) == (4, 2, 16, 128)
    assert c.tie_word_embeddings and c.weight_dtype is DType.bf16
    assert c.rope_scaling == RopeScaling(
        "llama3",
        factor=8.0,
        low_freq_factor=1.0,
        high_freq_factor=4.0,
        original_max_position_embeddings=64,
    )
    assert not (c.attention_bias or c.qk_norm or c.is_moe) and c.sliding_window is None


def test_architecture_fields() -> None:
    assert parse(model_config("mistral")).sliding_window == 8
    qwen2 = parse(model_config("qwen2"))
    assert qwen2.attention_bias and qwen2.rope_theta == 1e6
    assert qwen2.rope_scaling.kind == "yarn" and qwen2.rope_scaling.factor == 4.0
    qwen3 = parse(model_config("qwen3"))
    assert qwen3.qk_norm and qwen3.head_dim == 32 and not qwen3.attention_bias
    moe = parse(model_config("qwen3_moe"))
    assert (moe.num_experts, moe.num_experts_per_tok, moe.moe_intermediate_size) == (4, 2, 32)
    assert moe.moe_layers == (0,) and moe.norm_topk_prob and moe.qk_norm


def test_head_dim_defaults_to_hidden_over_heads() -> None:
    raw = model_config("llama_linear")
    del raw["head_dim"]
    assert parse(raw).head_dim == 64 // 4


def test_moe_layers_and_num_local_experts() -> None:
    raw = model_config("qwen3_moe")
    raw["num_local_experts"] = raw.pop("num_experts")
    raw.update(num_hidden_layers=4, mlp_only_layers=[], decoder_sparse_step=2)
    c = parse(raw)
    assert c.num_experts == 4 and c.moe_layers == (1, 3)


def test_mistral_window_absent_is_the_default_and_null_is_none() -> None:
    raw = model_config("mistral")
    del raw["sliding_window"]
    assert parse(raw).sliding_window == 4096
    assert parse({**raw, "sliding_window": None}).sliding_window is None


def qwen2_window(**fields: object) -> dict:
    return {**model_config("qwen2"), "use_sliding_window": True, "sliding_window": 8, **fields}


def test_qwen2_sliding_window_forms() -> None:
    assert parse(model_config("qwen2")).sliding_window is None
    assert parse(qwen2_window(max_window_layers=0)).sliding_window == 8
    assert parse(qwen2_window(max_window_layers=2)).sliding_window is None
    sliding = ["sliding_attention"] * 2
    assert parse(qwen2_window(layer_types=sliding)).sliding_window == 8
    # Only layer 1 slides, but the window is never reached: harmless.
    assert parse(qwen2_window(max_window_layers=1, sliding_window=256)).sliding_window is None


def test_qwen2_partial_sliding_window_is_refused() -> None:
    with pytest.raises(
        UnsupportedModel, match=r"config.json: sliding_window=8 applies to only some"
    ):
        parse(qwen2_window(max_window_layers=1))
    with pytest.raises(UnsupportedModel, match="one window for every layer"):
        parse(qwen2_window(layer_types=["full_attention", "sliding_attention"]))


@pytest.mark.parametrize(
    ("key", "value", "dtype"),
    [("torch_dtype", "float16", DType.f16), ("dtype", "torch.bfloat16", DType.bf16)],
)
def test_weight_dtype(key: str, value: str, dtype: DType) -> None:
    raw = {k: v for k, v in model_config("llama").items() if k not in ("torch_dtype", "dtype")}
    assert parse(raw).weight_dtype is DType.f32
    assert parse({**raw, key: value}).weight_dtype is dtype


def test_partial_rotary_factor_top_level_or_in_rope_parameters() -> None:
    raw = model_config("llama_linear")
    top = {**raw, "partial_rotary_factor": 0.5}
    inner = {**raw, "rope_parameters": {**raw["rope_parameters"], "partial_rotary_factor": 0.5}}
    assert parse(top).rotary_dim == parse(inner).rotary_dim == 8


def test_yarn_defaults_follow_transformers() -> None:
    raw = {**model_config("llama_linear"), "max_position_embeddings": 512}
    raw["rope_parameters"] = {"rope_type": "yarn", "rope_theta": 1e4}
    s = parse(raw).rope_scaling
    assert s.original_max_position_embeddings == 512 and s.factor == 1.0 and s.truncate


@pytest.mark.parametrize("field", ["vocab_size", "hidden_size", "num_hidden_layers", "model_type"])
def test_missing_required_field(field: str) -> None:
    raw = model_config("llama")
    del raw[field]
    with pytest.raises(CheckpointError, match=rf"/ckpt/config.json: required field '{field}'"):
        parse(raw)


def test_missing_moe_fields() -> None:
    raw = model_config("qwen3_moe")
    del raw["num_experts"]
    with pytest.raises(CheckpointError, match=r"'num_experts' \(or 'num_local_experts'\)"):
        parse(raw)
    del raw["moe_intermediate_size"]
    raw["num_experts"] = 4
    with pytest.raises(CheckpointError, match="'moe_intermediate_size' is missing"):
        parse(raw)


def test_wrong_field_type() -> None:
    with pytest.raises(CheckpointError, match=r"field 'hidden_size' must be int, got '64'"):
        parse({**model_config("llama"), "hidden_size": "64"})


def test_unknown_model_type_lists_supported() -> None:
    with pytest.raises(UnsupportedModel) as e:
        parse({**model_config("llama"), "model_type": "gpt2"})
    assert str(e.value) == (
        "model_type 'gpt2' is not supported; supported: llama, mistral, qwen2, qwen3, qwen3_moe"
    )


def test_unsupported_rope_and_dtype() -> None:
    raw = model_config("llama_linear")
    raw["rope_parameters"] = {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e4}
    with pytest.raises(UnsupportedModel, match="rope_type 'dynamic' is not supported; valid: def"):
        parse(raw)
    nested = {"full_attention": {"rope_type": "default"}, "sliding_attention": {}}
    with pytest.raises(UnsupportedModel, match="differs per layer type"):
        parse({**raw, "rope_parameters": nested})
    raw["rope_parameters"] = {"rope_type": "linear", "rope_theta": 1e4}
    with pytest.raises(CheckpointError, match="rope_parameters of type 'linear' needs 'factor'"):
        parse(raw)
    with pytest.raises(UnsupportedModel, match="weight dtype 'float8_e4m3fn' is not supported"):
        parse({**model_config("qwen3"), "dtype": "float8_e4m3fn"})


def test_llama_style_biases_refused() -> None:
    with pytest.raises(UnsupportedModel, match="attention_bias=true"):
        parse({**model_config("llama"), "attention_bias": True})
    with pytest.raises(UnsupportedModel, match="mlp_bias=true"):
        parse({**model_config("llama"), "mlp_bias": True})


def test_load_from_file(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(model_config("qwen3")))
    assert load_hf_config(path) == parse(model_config("qwen3"))
    path.write_text("{not json")
    with pytest.raises(CheckpointError, match=r"config\.json is not valid JSON"):
        load_hf_config(path)


def test_every_tiny_model_parses() -> None:
    for name in TINY_MODELS:
        assert parse(model_config(name)).model_type == TINY_MODELS[name].config["model_type"]


def test_inconsistent_head_counts() -> None:
    raw = {**model_config("llama_linear"), "num_attention_heads": 3}
    del raw["head_dim"]
    with pytest.raises(
        CheckpointError, match="hidden_size 64 is not a multiple of num_attention_h"
    ):
        parse(raw)
    with pytest.raises(CheckpointError, match="heads 4 is not a multiple of num_key_value_heads 3"):
        parse({**model_config("llama"), "num_key_value_heads": 3})
    moe = {**model_config("qwen3_moe"), "num_experts_per_tok": 5}
    with pytest.raises(CheckpointError, match=r"num_experts_per_tok=5 must be in 1\.\.4"):
        parse(moe)
    with pytest.raises(CheckpointError, match="decoder_sparse_step must be >= 1, got 0"):
        parse({**model_config("qwen3_moe"), "decoder_sparse_step": 0})


def test_config_must_be_an_object(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text("[1, 2]")
    with pytest.raises(CheckpointError, match=r"config\.json must hold a JSON object"):
        load_hf_config(path)
