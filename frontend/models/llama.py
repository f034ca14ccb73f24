"""Llama (and kin such as SmolLM2): the plain decoder, and the weight-name table the others extend."""

from __future__ import annotations

from typing import Any

from ...errors import UnsupportedModel
from .spec import Architecture, ConfigFields

# Hugging Face name -> ferrumc name; {i} is the layer.
WEIGHT_NAMES = {
    "model.embed_tokens.weight": "embed.weight",
    "model.norm.weight": "norm.weight",
    "lm_head.weight": "lm_head.weight",
    "model.layers.{i}.input_layernorm.weight": "layers.{i}.attn_norm.weight",
    "model.layers.{i}.post_attention_layernorm.weight": "layers.{i}.mlp_norm.weight",
    "model.layers.{i}.self_attn.q_proj.weight": "layers.{i}.attn.q.weight",
    "model.layers.{i}.self_attn.k_proj.weight": "layers.{i}.attn.k.weight",
    "model.layers.{i}.self_attn.v_proj.weight": "layers.{i}.attn.v.weight",
    "model.layers.{i}.self_attn.o_proj.weight": "layers.{i}.attn.o.weight",
    "model.layers.{i}.mlp.gate_proj.weight": "layers.{i}.mlp.gate.weight",
    "model.layers.{i}.mlp.up_proj.weight": "layers.{i}.mlp.up.weight",
    "model.layers.{i}.mlp.down_proj.weight": "layers.{i}.mlp.down.weight",
}


def refuse_biases(fields: ConfigFields) -> None:
    """Llama-style attention_bias / mlp_bias put biases on o_proj and the MLP, which ferrumc lacks."""
    for key in ("attention_bias", "mlp_bias"):
        if fields.get(key, bool, False):
            raise UnsupportedModel(
                f"{fields.source}: {key}=true (biases on every projection) is not supported; "
                "only qwen2-style q/k/v biases are"
            )


def config_fields(fields: ConfigFields) -> dict[str, Any]:
    refuse_biases(fields)
    return {}


ARCH = Architecture(
    "llama",
    WEIGHT_NAMES,
    config_fields,
    defaults={"max_position_embeddings": 2048},
)
