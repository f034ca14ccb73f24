"""load_hf on tiny checkpoints: weights by ferrumc name, dtypes, shards, MoE layouts, and every refusal."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from ferrumc.errors import CheckpointError, UnsupportedModel
from ferrumc.frontend.hf import load_hf
from ferrumc.frontend.safetensors_io import SafetensorsCheckpoint, read_raw
from ferrumc.ir.types import DType
from ferrumc.tests.tiny_checkpoints import TINY_MODELS, checkpoint_tensors

Tensors = dict[str, np.ndarray]


def rewrite(src: Path, dst: Path, change: Callable[[Tensors], None]) -> Path:
    """A copy of checkpoint `src` at `dst` whose tensors `change` edited in place."""
    shutil.copytree(src, dst)
    tensors = load_file(dst / "model.safetensors")
    change(tensors)
    save_file(tensors, str(dst / "model.safetensors"))
    return dst


@pytest.mark.parametrize("name", list(TINY_MODELS))
def test_weights_are_the_graphs_and_hold_the_checkpoint(name: str, tiny_checkpoint) -> None:
    model = load_hf(tiny_checkpoint(name))
    assert model.format == "hf" and model.config.weight_dtype is DType.f32
    assert model.weights.types == model.graph().weight_types()
    hf = checkpoint_tensors(name)
    if name.startswith("llama"):
        q = model.weights.load("layers.1.attn.q.weight")
        np.testing.assert_array_equal(q, hf["model.layers.1.self_attn.q_proj.weight"])
    for target, t in model.weights.types.items():
        array = model.weights.load(target)
        assert array.dtype == np.float32 and array.shape == t.shape, target


def test_llama_unused_inv_freq_and_tied_head(tiny_checkpoint) -> None:
    model = load_hf(tiny_checkpoint("llama"))
    assert model.weights.unused == ["model.layers.0.self_attn.rotary_emb.inv_freq"]
    assert "lm_head.weight" not in model.weights


def test_tied_checkpoint_that_stores_lm_head_anyway(tiny_checkpoint, tmp_path: Path) -> None:
    def add_head(t: Tensors) -> None:
        t["lm_head.weight"] = t["model.embed_tokens.weight"].copy()

    model = load_hf(rewrite(tiny_checkpoint("qwen2"), tmp_path / "m", add_head))
    assert model.weights.unused == ["lm_head.weight"]


@pytest.mark.parametrize(("dtype", "ours"), [("bf16", DType.bf16), ("f16", DType.f16)])
def test_low_precision_checkpoints(dtype: str, ours: DType, tiny_checkpoint) -> None:
    model = load_hf(tiny_checkpoint("qwen3", dtype))
    assert model.config.weight_dtype is ours
    hf = checkpoint_tensors("qwen3", dtype=dtype)
    k = model.weights.load("layers.0.attn.k_norm.weight")
    assert k.dtype == ours.numpy
    np.testing.assert_array_equal(k, hf["model.layers.0.self_attn.k_norm.weight"])


def test_stored_dtype_wins_and_stragglers_are_converted(tiny_checkpoint, tmp_path: Path) -> None:
    def norms_to_f32(t: Tensors) -> None:
        for name in t:
            if name.endswith("norm.weight"):
                t[name] = t[name].astype(np.float32)

    folder = rewrite(tiny_checkpoint("mistral", "bf16"), tmp_path / "m", norms_to_f32)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "dtype": "float32"}))
    model = load_hf(folder)
    assert model.config.weight_dtype is DType.bf16  # what most bytes are stored in
    assert model.weights.load("norm.weight").dtype == ml_dtypes.bfloat16


def test_bf16_raw_fallback_matches_safetensors(tiny_checkpoint) -> None:
    ckpt = SafetensorsCheckpoint(tiny_checkpoint("llama", "bf16"))
    info = ckpt.tensors["model.layers.1.mlp.down_proj.weight"]
    assert info.dtype == "BF16" and info.shape == (64, 128)
    np.testing.assert_array_equal(read_raw(info), ckpt.read(info.name))


def shard(src: Path, dst: Path) -> Path:
    """Split `src`'s model.safetensors into two shards plus an index."""
    shutil.copytree(src, dst)
    tensors = load_file(dst / "model.safetensors")
    (dst / "model.safetensors").unlink()
    names = sorted(tensors)
    weight_map = {}
    for i, part in enumerate((names[: len(names) // 2], names[len(names) // 2 :])):
        file = f"model-0000{i + 1}-of-00002.safetensors"
        save_file({n: tensors[n] for n in part}, str(dst / file))
        weight_map.update(dict.fromkeys(part, file))
    index = {"metadata": {}, "weight_map": weight_map}
    (dst / "model.safetensors.index.json").write_text(json.dumps(index))
    return dst


def test_sharded_checkpoint(tiny_checkpoint, tmp_path: Path) -> None:
    single = load_hf(tiny_checkpoint("qwen3_moe"))
    sharded = load_hf(shard(tiny_checkpoint("qwen3_moe"), tmp_path / "m"))
    assert sharded.weights.types == single.weights.types
    for name in single.weights.types:
        np.testing.assert_array_equal(sharded.weights.load(name), single.weights.load(name))


def test_missing_shard_and_misplaced_tensor(tiny_checkpoint, tmp_path: Path) -> None:
    folder = shard(tiny_checkpoint("llama"), tmp_path / "m")
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    index["weight_map"]["model.norm.weight"] = "model-00001-of-00002.safetensors"
    wrong = folder / "wrong.json"
    wrong.write_text(json.dumps(index))
    shutil.copy(wrong, folder / "model.safetensors.index.json")
    with pytest.raises(CheckpointError, match=r"places model.norm.weight in model-00001-of-00002"):
        load_hf(folder)
    (folder / "model-00001-of-00002.safetensors").unlink()
    with pytest.raises(
        CheckpointError, match=r"missing checkpoint shard .*00001-of-00002.*re-down"
    ):
        load_hf(folder)


def test_fused_transformers5_experts(tiny_checkpoint, tmp_path: Path) -> None:
    def fuse(t: Tensors) -> None:
        p = "model.layers.0.mlp.experts"
        pieces = {k: [t.pop(f"{p}.{e}.{k}_proj.weight") for e in range(4)] for k in ("gate", "up")}
        t[f"{p}.gate_up_proj"] = np.concatenate(
            [np.stack(pieces["gate"]), np.stack(pieces["up"])], axis=1
        )
        t[f"{p}.down_proj"] = np.stack([t.pop(f"{p}.{e}.down_proj.weight") for e in range(4)])

    per_expert = load_hf(tiny_checkpoint("qwen3_moe"))
    fused = load_hf(rewrite(tiny_checkpoint("qwen3_moe"), tmp_path / "m", fuse))
    for k in ("gate", "up", "down"):
        name = f"layers.0.moe.{k}.weight"
        np.testing.assert_array_equal(fused.weights.load(name), per_expert.weights.load(name))


def test_missing_config(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError) as e:
        load_hf(tmp_path)
    assert str(e.value).startswith(f"no config.json in directory {tmp_path}; expected a Hugging")
    assert "model.safetensors" in str(e.value)


def test_missing_safetensors(tiny_checkpoint, tmp_path: Path) -> None:
    shutil.copytree(tiny_checkpoint("llama"), tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"no model.safetensors or model.safetensors.index"):
        load_hf(tmp_path / "m")


def test_truncated_file(tiny_checkpoint, tmp_path: Path) -> None:
    folder = shutil.copytree(tiny_checkpoint("llama"), tmp_path / "m")
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(
        CheckpointError, match=r"model.safetensors is truncated or corrupt .*re-down"
    ):
        load_hf(folder)


def test_unmapped_tensor(tiny_checkpoint, tmp_path: Path) -> None:
    def add(t: Tensors) -> None:
        t["model.layers.0.mlp.extra_proj.weight"] = np.zeros((4, 4), np.float32)

    with pytest.raises(CheckpointError) as e:
        load_hf(rewrite(tiny_checkpoint("llama"), tmp_path / "m", add))
    assert str(e.value).startswith(
        f"tensor model.layers.0.mlp.extra_proj.weight in {tmp_path / 'm' / 'model.safetensors'} "
        "is not part of a llama model"
    )


def test_tensor_the_config_does_not_have(tiny_checkpoint, tmp_path: Path) -> None:
    def add(t: Tensors) -> None:
        t["model.layers.2.self_attn.q_proj.weight"] = np.zeros((64, 64), np.float32)

    with pytest.raises(
        CheckpointError, match=r"q_proj.weight in .* maps to layers.2.attn.q.weight"
    ):
        load_hf(rewrite(tiny_checkpoint("mistral"), tmp_path / "m", add))


def test_missing_tensor(tiny_checkpoint, tmp_path: Path) -> None:
    def drop(t: Tensors) -> None:
        del t["model.layers.1.self_attn.k_proj.weight"]

    with pytest.raises(CheckpointError) as e:
        load_hf(rewrite(tiny_checkpoint("qwen2"), tmp_path / "m", drop))
    assert str(e.value) == (
        "tensor model.layers.1.self_attn.k_proj.weight (ferrumc layers.1.attn.k.weight, "
        f"f32[32,64]) is missing from {tmp_path / 'm'}; re-download the checkpoint or check config.json"
    )


def test_missing_expert(tiny_checkpoint, tmp_path: Path) -> None:
    def drop(t: Tensors) -> None:
        del t["model.layers.0.mlp.experts.2.up_proj.weight"]

    with pytest.raises(
        CheckpointError, match=r"tensor model.layers.0.mlp.experts.2.up_proj.weight "
    ):
        load_hf(rewrite(tiny_checkpoint("qwen3_moe"), tmp_path / "m", drop))


def test_shape_mismatch_names_both_shapes(tiny_checkpoint, tmp_path: Path) -> None:
    def widen(t: Tensors) -> None:
        t["model.layers.0.mlp.up_proj.weight"] = np.zeros((96, 64), np.float32)

    with pytest.raises(CheckpointError) as e:
        load_hf(rewrite(tiny_checkpoint("llama_linear"), tmp_path / "m", widen))
    assert str(e.value) == (
        f"tensor model.layers.0.mlp.up_proj.weight in {tmp_path / 'm' / 'model.safetensors'} has "
        "shape [96,64], but the config expects [128,64] (for layers.0.mlp.up.weight); "
        "config.json and weights disagree"
    )


def test_expert_shape_mismatch(tiny_checkpoint, tmp_path: Path) -> None:
    def widen(t: Tensors) -> None:
        t["model.layers.0.mlp.experts.1.down_proj.weight"] = np.zeros((64, 16), np.float32)

    with pytest.raises(CheckpointError, match=r"shape \[64,16\], but the config expects \[64,32\]"):
        load_hf(rewrite(tiny_checkpoint("qwen3_moe"), tmp_path / "m", widen))


def test_unsupported_tensor_dtype(tiny_checkpoint, tmp_path: Path) -> None:
    def to_f64(t: Tensors) -> None:
        t["model.norm.weight"] = t["model.norm.weight"].astype(np.float64)

    with pytest.raises(UnsupportedModel, match=r"model.norm.weight in .* has dtype F64; supported"):
        load_hf(rewrite(tiny_checkpoint("qwen3"), tmp_path / "m", to_f64))


def test_bad_index_and_duplicated_tensor(tiny_checkpoint, tmp_path: Path) -> None:
    folder = shard(tiny_checkpoint("llama"), tmp_path / "m")
    index = folder / "model.safetensors.index.json"
    index.write_text('{"metadata": {}}')
    with pytest.raises(CheckpointError, match=r"is not a safetensors index .*'weight_map'"):
        load_hf(folder)
    first = load_file(folder / "model-00001-of-00002.safetensors")
    name = next(iter(first))
    save_file({name: first[name]}, str(folder / "extra.safetensors"))
    weight_map = {n: "model-00001-of-00002.safetensors" for n in first}
    index.write_text(json.dumps({"weight_map": {**weight_map, name: "extra.safetensors"}}))
    with pytest.raises(CheckpointError, match=rf"tensor {name} is in both .*00001-of-00002"):
        SafetensorsCheckpoint(folder)


def test_experts_given_twice(tiny_checkpoint, tmp_path: Path) -> None:
    def add_fused(t: Tensors) -> None:
        t["model.layers.0.mlp.experts.down_proj"] = np.zeros((4, 64, 32), np.float32)

    with pytest.raises(CheckpointError, match=r"layers.0.moe.down.weight is given twice in .*: by"):
        load_hf(rewrite(tiny_checkpoint("qwen3_moe"), tmp_path / "m", add_fused))


def test_integer_tensor_for_a_float_weight(tiny_checkpoint, tmp_path: Path) -> None:
    def to_int(t: Tensors) -> None:
        t["model.norm.weight"] = t["model.norm.weight"].astype(np.int32)

    with pytest.raises(
        CheckpointError, match=r"model.norm.weight in .* has dtype I32, expected a fl"
    ):
        load_hf(rewrite(tiny_checkpoint("qwen3"), tmp_path / "m", to_int))


def test_storage_records_converted_tensors(tiny_checkpoint, tmp_path: Path) -> None:
    def norm_to_f32(t: Tensors) -> None:
        t["model.norm.weight"] = t["model.norm.weight"].astype(np.float32)

    model = load_hf(rewrite(tiny_checkpoint("qwen3", "bf16"), tmp_path / "m", norm_to_f32))
    assert model.weights.storage == {"norm.weight": "F32"}
    assert load_hf(tiny_checkpoint("qwen3", "bf16")).weights.storage == {}
