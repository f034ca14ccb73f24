"""Tiny random Hugging Face checkpoints with the real tensor names and configs, written without torch.

Each model is a few hundred kilobytes: hidden 64, 2 layers, 4 query / 2 key-value heads, head_dim 16,
intermediate 128, vocab 256. The weights are a pure function of (name, dtype, seed), so the files are
byte-for-byte reproducible, and tools/make_goldens.py records transformers' outputs for them.

Weight scales were chosen so greedy decoding has clear winners and depends on the context (`_init`):
  - q/k/v and gate/up ~ N(0, 0.18^2): after an RMSNorm (rms 1) a q/k row is ~N(0, (0.18*8)^2), so
    attention scores q.k/sqrt(16) have std ~2: attention is neither uniform nor one-hot.
  - o_proj ~ N(0, 0.4^2), down_proj ~ N(0, 0.25^2): each residual branch adds rms ~2-3, so the
    residual after 2 layers is ~5x the embedding. With smaller branches a tied model's logits
    are dominated by <e_last, e_last> and greedy decoding just repeats the last prompt token.
  - embeddings / lm_head ~ N(0, 1): logits = rmsnorm(h) . E have std ~8, so the best and
    second-best of 256 logits differ by ~2 on average, far above f32 (or f16) rounding error.
    Minimum greedy margins per model are printed by tools/make_goldens.py (all > 1e-2).
  - norms ~ 1 + N(0, 0.1^2): near the identity, but a loader that ignores them shows up.
  - router ~ N(0, 0.5^2): expert logits with std ~4, so the top-2 choice is rarely a near-tie.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
from safetensors.numpy import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>")
UNK_ID, BOS_ID, EOS_ID, IM_START_ID, IM_END_ID = range(len(SPECIAL_TOKENS))
DTYPES = {"f32": np.float32, "f16": np.float16, "bf16": ml_dtypes.bfloat16}
_DTYPE_NAMES = {"f32": "float32", "f16": "float16", "bf16": "bfloat16"}

# The shape every tiny model shares; a spec overrides what it exercises.
_BASE: dict[str, Any] = {
    "vocab_size": 256,
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "intermediate_size": 128,
    "max_position_embeddings": 512,
    "rms_norm_eps": 1e-6,
    "hidden_act": "silu",
    "bos_token_id": BOS_ID,
    "eos_token_id": EOS_ID,
    "tie_word_embeddings": False,
}

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


@dataclass(frozen=True)
class TinySpec:
    """One tiny model: its config.json fields beyond `_BASE`, and what else the folder holds."""

    architecture: str
    config: dict[str, Any]
    # "4.x": top-level rope_theta + rope_scaling, torch_dtype; "5.x": rope_parameters, dtype.
    config_form: str = "5.x"
    extra_tensors: tuple[str, ...] = field(default_factory=tuple)  # present but unused by HF
    chat_template: bool = False


TINY_MODELS: dict[str, TinySpec] = {
    "llama": TinySpec(
        "LlamaForCausalLM",
        {
            "model_type": "llama",
            "tie_word_embeddings": True,
            "rope_theta": 10000.0,
            "rope_scaling": {
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
            },
        },
        config_form="4.x",
        extra_tensors=("model.layers.0.self_attn.rotary_emb.inv_freq",),
    ),
    "llama_linear": TinySpec(
        "LlamaForCausalLM",
        {
            "model_type": "llama",
            "rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0},
        },
    ),
    "mistral": TinySpec(
        "MistralForCausalLM",
        {
            "model_type": "mistral",
            "sliding_window": 8,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
        },
    ),
    "qwen2": TinySpec(
        "Qwen2ForCausalLM",
        {
            "model_type": "qwen2",
            "tie_word_embeddings": True,
            "eos_token_id": IM_END_ID,
            # YaRN's factor should equal max_position_embeddings / original (256 / 64), else
            # transformers warns that the two disagree.
            "max_position_embeddings": 256,
            "use_sliding_window": False,
            "rope_theta": 1000000.0,
            "rope_scaling": {
                "rope_type": "yarn",
                "factor": 4.0,
                "original_max_position_embeddings": 64,
            },
        },
        config_form="4.x",
        chat_template=True,
    ),
    "qwen3": TinySpec(
        "Qwen3ForCausalLM",
        {
            "model_type": "qwen3",
            "head_dim": 32,
            "use_sliding_window": False,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0},
        },
    ),
    "qwen3_moe": TinySpec(
        "Qwen3MoeForCausalLM",
        {
            "model_type": "qwen3_moe",
            "num_experts": 4,
            "num_experts_per_tok": 2,
            "moe_intermediate_size": 32,
            "norm_topk_prob": True,
            "decoder_sparse_step": 1,
            "mlp_only_layers": [1],  # layer 1 is a dense MLP of intermediate_size
            "use_sliding_window": False,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0},
        },
    ),
}


def model_config(name: str, dtype: str = "f32") -> dict[str, Any]:
    """The config.json contents of a tiny model."""
    spec = TINY_MODELS[name]
    config = {"architectures": [spec.architecture], **_BASE, **spec.config}
    dtype_key = "torch_dtype" if spec.config_form == "4.x" else "dtype"
    config[dtype_key] = _DTYPE_NAMES[dtype]
    return dict(sorted(config.items()))


def _moe_layers(config: dict[str, Any]) -> set[int]:
    """The layers whose MLP is sparse, by the rule in transformers' Qwen3MoeDecoderLayer."""
    if config.get("num_experts", 0) == 0:
        return set()
    step, dense = config["decoder_sparse_step"], set(config.get("mlp_only_layers", []))
    return {i for i in range(config["num_hidden_layers"]) if i not in dense and (i + 1) % step == 0}


def tensor_shapes(config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Every tensor a checkpoint with this config holds, by its Hugging Face name."""
    c, v, d = config["hidden_size"], config["vocab_size"], config["head_dim"]
    hq, hkv, inter = (
        config["num_attention_heads"],
        config["num_key_value_heads"],
        config["intermediate_size"],
    )
    model_type = config["model_type"]
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (v, c)}
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}"
        shapes[f"{p}.input_layernorm.weight"] = (c,)
        shapes[f"{p}.post_attention_layernorm.weight"] = (c,)
        for proj, rows in (("q", hq * d), ("k", hkv * d), ("v", hkv * d)):
            shapes[f"{p}.self_attn.{proj}_proj.weight"] = (rows, c)
            if model_type == "qwen2":
                shapes[f"{p}.self_attn.{proj}_proj.bias"] = (rows,)
        shapes[f"{p}.self_attn.o_proj.weight"] = (c, hq * d)
        if model_type in ("qwen3", "qwen3_moe"):
            shapes[f"{p}.self_attn.q_norm.weight"] = (d,)
            shapes[f"{p}.self_attn.k_norm.weight"] = (d,)
        if i in _moe_layers(config):
            moe_inter = config["moe_intermediate_size"]
            shapes[f"{p}.mlp.gate.weight"] = (config["num_experts"], c)
            for e in range(config["num_experts"]):
                shapes[f"{p}.mlp.experts.{e}.gate_proj.weight"] = (moe_inter, c)
                shapes[f"{p}.mlp.experts.{e}.up_proj.weight"] = (moe_inter, c)
                shapes[f"{p}.mlp.experts.{e}.down_proj.weight"] = (c, moe_inter)
        else:
            shapes[f"{p}.mlp.gate_proj.weight"] = (inter, c)
            shapes[f"{p}.mlp.up_proj.weight"] = (inter, c)
            shapes[f"{p}.mlp.down_proj.weight"] = (c, inter)
    shapes["model.norm.weight"] = (c,)
    if not config["tie_word_embeddings"]:
        shapes["lm_head.weight"] = (v, c)
    return shapes


def _init(name: str, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Random f32 values for one tensor; seeded by its name so tensors don't depend on each other."""
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    if name.endswith("norm.weight"):
        return (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
    if name.endswith(("embed_tokens.weight", "lm_head.weight")):
        std = 1.0
    elif name.endswith("mlp.gate.weight"):  # MoE router
        std = 0.5
    elif name.endswith("o_proj.weight"):
        std = 0.4
    elif name.endswith("down_proj.weight"):
        std = 0.25
    elif name.endswith(".bias"):
        std = 0.2
    else:
        std = 0.18
    return (std * rng.standard_normal(shape)).astype(np.float32)


def checkpoint_tensors(name: str, *, dtype: str = "f32", seed: int = 0) -> dict[str, np.ndarray]:
    """The tensors `write_tiny_checkpoint` stores, by Hugging Face name."""
    spec = TINY_MODELS[name]
    config = model_config(name, dtype)
    tensors = {n: _init(n, s, seed).astype(DTYPES[dtype]) for n, s in tensor_shapes(config).items()}
    for extra in spec.extra_tensors:
        # Old Llama checkpoints stored rotary frequencies per layer; loaders must skip them.
        half = config["head_dim"] // 2
        tensors[extra] = (1.0 / 10000.0 ** (np.arange(half, dtype=np.float32) / half)).astype(
            np.float32
        )
    return tensors


def build_tokenizer() -> Tokenizer:
    """A 256-token byte-level BPE (as Llama 3, Qwen and SmolLM2 use), trained on a fixed text.

    Only printable ASCII, space and newline are in the alphabet; other characters map to <unk>.
    """
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    byte_chars = pre_tokenizers.ByteLevel.alphabet()
    ascii_chars = [c for c in byte_chars if c.isascii() and c.isprintable()]
    alphabet = sorted([*ascii_chars, "Ġ", "Ċ"])  # Ġ / Ċ: how ByteLevel spells space / newline
    trainer = trainers.BpeTrainer(
        vocab_size=256,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=alphabet,
        limit_alphabet=len(alphabet),
        show_progress=False,
    )
    corpus = [
        "The quick brown fox jumps over the lazy dog.",
        "What is the capital of France? The capital of France is Paris.",
        "You are a helpful assistant. Hello, how are you today? I am fine, thank you.",
        "def main():\n    return 42\n",
        "In the beginning there was the word, and the word was with the model.",
        "Large language models predict the next token from the tokens that came before.",
        "A compiler translates programs written in one language into another language.",
        "Numbers like 2024, 3.14 and 1000000 appear in text; so do symbols: #, $, %, &, @.",
        "She sells sea shells by the sea shore, and the shells she sells are surely shells.",
    ] * 4
    tokenizer.train_from_iterator(corpus, trainer)
    return tokenizer


def _tokenizer_config(spec: TinySpec) -> dict[str, Any]:
    eos = SPECIAL_TOKENS[spec.config.get("eos_token_id", EOS_ID)]
    added = {
        str(i): {
            "content": t,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for i, t in enumerate(SPECIAL_TOKENS)
    }
    return {
        "added_tokens_decoder": added,
        "bos_token": "<s>",
        "clean_up_tokenization_spaces": False,
        "eos_token": eos,
        "model_max_length": spec.config.get(
            "max_position_embeddings", _BASE["max_position_embeddings"]
        ),
        "pad_token": "<unk>",
        "tokenizer_class": "PreTrainedTokenizerFast",
        "unk_token": "<unk>",
    }


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def write_tiny_checkpoint(name: str, out_dir: Path, *, dtype: str = "f32", seed: int = 0) -> Path:
    """Write model `name` (a key of TINY_MODELS) as a Hugging Face folder under out_dir; returns out_dir."""
    if name not in TINY_MODELS:
        raise KeyError(f"unknown tiny model {name!r}; choose from {', '.join(TINY_MODELS)}")
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose from {', '.join(DTYPES)}")
    spec = TINY_MODELS[name]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = model_config(name, dtype)
    _write_json(out_dir / "config.json", config)
    # safetensors' numpy writer stores ml_dtypes.bfloat16 arrays as "BF16".
    save_file(
        checkpoint_tensors(name, dtype=dtype, seed=seed),
        str(out_dir / "model.safetensors"),
        metadata={"format": "pt"},
    )
    build_tokenizer().save(str(out_dir / "tokenizer.json"))
    _write_json(out_dir / "tokenizer_config.json", _tokenizer_config(spec))
    generation = {
        "bos_token_id": config["bos_token_id"],
        "do_sample": False,
        "eos_token_id": config["eos_token_id"],
    }
    _write_json(out_dir / "generation_config.json", generation)
    if spec.chat_template:
        (out_dir / "chat_template.jinja").write_text(CHATML_TEMPLATE)
    return out_dir
