"""The tiny checkpoints are reproducible, carry Hugging Face's tensor names, and match their goldens."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from tokenizers import Tokenizer

from ferrumc.tests.tiny_checkpoints import (
    IM_END_ID,
    SPECIAL_TOKENS,
    TINY_MODELS,
    checkpoint_tensors,
    write_tiny_checkpoint,
)

GOLDENS = Path(__file__).parent / "goldens"
SAFETENSORS_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16}


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """A minimal reader, since safetensors.numpy cannot load BF16."""
    data = path.read_bytes()
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + header_len])
    header.pop("__metadata__", None)
    body = data[8 + header_len :]
    return {
        name: np.frombuffer(
            body[info["data_offsets"][0] : info["data_offsets"][1]],
            dtype=SAFETENSORS_DTYPES[info["dtype"]],
        ).reshape(info["shape"])
        for name, info in header.items()
    }


@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16"])
@pytest.mark.parametrize("name", list(TINY_MODELS))
def test_writes_the_same_bytes_twice(name: str, dtype: str, tmp_path: Path) -> None:
    first = write_tiny_checkpoint(name, tmp_path / "a", dtype=dtype)
    second = write_tiny_checkpoint(name, tmp_path / "b", dtype=dtype)
    files = sorted(p.name for p in first.iterdir())
    assert files == sorted(p.name for p in second.iterdir())
    for file in files:
        assert (first / file).read_bytes() == (second / file).read_bytes(), file


@pytest.mark.parametrize("dtype", ["f16", "bf16"])
def test_half_precision_is_the_f32_checkpoint_rounded(dtype: str, tmp_path: Path) -> None:
    write_tiny_checkpoint("qwen3", tmp_path, dtype=dtype)
    stored = read_safetensors(tmp_path / "model.safetensors")
    for name, value in checkpoint_tensors("qwen3", dtype="f32").items():
        expected = value.astype(stored[name].dtype)
        assert np.array_equal(stored[name].view(np.uint16), expected.view(np.uint16)), name


def test_seed_changes_the_weights() -> None:
    a = checkpoint_tensors("llama", seed=0)["model.embed_tokens.weight"]
    b = checkpoint_tensors("llama", seed=1)["model.embed_tokens.weight"]
    assert not np.array_equal(a, b)


def layer_names(i: int, mlp: tuple[str, ...] = ("gate_proj", "up_proj", "down_proj")) -> set[str]:
    attn = {f"model.layers.{i}.self_attn.{p}_proj.weight" for p in "qkvo"}
    norms = {
        f"model.layers.{i}.{n}.weight" for n in ("input_layernorm", "post_attention_layernorm")
    }
    return attn | norms | {f"model.layers.{i}.mlp.{p}.weight" for p in mlp}


DENSE = layer_names(0) | layer_names(1) | {"model.embed_tokens.weight", "model.norm.weight"}
QK_NORM = {f"model.layers.{i}.self_attn.{n}_norm.weight" for i in (0, 1) for n in "qk"}
QKV_BIAS = {f"model.layers.{i}.self_attn.{p}_proj.bias" for i in (0, 1) for p in "qkv"}
EXPERTS = {
    f"model.layers.0.mlp.experts.{e}.{p}.weight"
    for e in range(4)
    for p in ("gate_proj", "up_proj", "down_proj")
}
EXPECTED_NAMES = {
    "llama": DENSE | {"model.layers.0.self_attn.rotary_emb.inv_freq"},
    "llama_linear": DENSE | {"lm_head.weight"},
    "mistral": DENSE | {"lm_head.weight"},
    "qwen2": DENSE | QKV_BIAS,
    "qwen3": DENSE | QK_NORM | {"lm_head.weight"},
    "qwen3_moe": (layer_names(0, mlp=("gate",)) | layer_names(1) | EXPERTS | QK_NORM)
    | {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"},
}


@pytest.mark.parametrize("name", list(TINY_MODELS))
def test_tensor_names_are_hugging_faces(name: str, tmp_path: Path) -> None:
    write_tiny_checkpoint(name, tmp_path, dtype="bf16")
    tensors = read_safetensors(tmp_path / "model.safetensors")
    assert set(tensors) == EXPECTED_NAMES[name]
    for tensor_name, value in tensors.items():
        want = np.float32 if tensor_name.endswith("inv_freq") else ml_dtypes.bfloat16
        assert value.dtype == want, tensor_name


def test_shapes_follow_the_config(tmp_path: Path) -> None:
    write_tiny_checkpoint("qwen3_moe", tmp_path / "moe")
    moe = read_safetensors(tmp_path / "moe" / "model.safetensors")
    assert moe["model.layers.0.mlp.gate.weight"].shape == (4, 64)
    assert moe["model.layers.0.mlp.experts.3.gate_proj.weight"].shape == (32, 64)
    assert moe["model.layers.0.mlp.experts.3.down_proj.weight"].shape == (64, 32)
    assert moe["model.layers.1.mlp.down_proj.weight"].shape == (64, 128)  # mlp_only_layers
    write_tiny_checkpoint("qwen3", tmp_path / "qwen3")
    qwen3 = read_safetensors(tmp_path / "qwen3" / "model.safetensors")
    assert qwen3["model.layers.1.self_attn.q_proj.weight"].shape == (4 * 32, 64)
    assert qwen3["model.layers.1.self_attn.k_proj.weight"].shape == (2 * 32, 64)
    assert qwen3["model.layers.1.self_attn.o_proj.weight"].shape == (64, 4 * 32)
    assert qwen3["model.layers.1.self_attn.k_norm.weight"].shape == (32,)


def test_configs_use_both_transformers_forms(tmp_path: Path) -> None:
    llama = json.loads((write_tiny_checkpoint("llama", tmp_path / "l") / "config.json").read_text())
    assert llama["rope_theta"] == 10000.0 and llama["rope_scaling"]["rope_type"] == "llama3"
    assert "rope_parameters" not in llama and llama["torch_dtype"] == "float32"
    linear = write_tiny_checkpoint("llama_linear", tmp_path / "ll", dtype="bf16")
    config = json.loads((linear / "config.json").read_text())
    assert config["rope_parameters"] == {
        "factor": 2.0,
        "rope_theta": 10000.0,
        "rope_type": "linear",
    }
    assert "rope_theta" not in config and config["dtype"] == "bfloat16"


def test_tokenizer_and_chat_template(tmp_path: Path) -> None:
    folder = write_tiny_checkpoint("qwen2", tmp_path)
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    assert tokenizer.get_vocab_size() == 256
    assert [tokenizer.token_to_id(t) for t in SPECIAL_TOKENS] == list(range(len(SPECIAL_TOKENS)))
    ids = tokenizer.encode("<|im_start|>user\nWhat is the capital of France?<|im_end|>").ids
    assert ids[0] == SPECIAL_TOKENS.index("<|im_start|>") and ids[-1] == IM_END_ID
    assert tokenizer.decode(ids, skip_special_tokens=True) == "user\nWhat is the capital of France?"
    assert "<|im_start|>" in (folder / "chat_template.jinja").read_text()
    generation = json.loads((folder / "generation_config.json").read_text())
    assert generation["eos_token_id"] == IM_END_ID


@pytest.mark.parametrize("name", [*TINY_MODELS, "smollm2"])
def test_golden_files_have_the_documented_layout(name: str) -> None:
    golden = np.load(GOLDENS / f"{name}.npz")
    vocab = 256 if name in TINY_MODELS else 49152
    assert int(golden["num_prompts"]) == (3 if name in TINY_MODELS else 2)
    for i in range(int(golden["num_prompts"])):
        prompt, positions = golden[f"prompt_ids_{i}"], golden[f"logit_positions_{i}"]
        assert prompt.dtype == np.int32 and positions.dtype == np.int32
        assert golden[f"logits_{i}"].shape == (len(positions), vocab)
        assert positions[-1] == len(prompt) - 1
        assert golden[f"greedy_ids_{i}"].shape == golden[f"greedy_margins_{i}"].shape == (32,)
        # The first greedy token is the argmax of the last prompt position's logits.
        assert golden[f"logits_{i}"][-1].argmax() == golden[f"greedy_ids_{i}"][0]
