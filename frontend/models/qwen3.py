"""Qwen3: Llama with an RMSNorm over each head of q and k before rotary (no biases)."""

from __future__ import annotations

from typing import Any

from . import llama, qwen2
from .spec import Architecture, ConfigFields

WEIGHT_NAMES = {
    **llama.WEIGHT_NAMES,
    "model.layers.{i}.self_attn.q_norm.weight": "layers.{i}.attn.q_norm.weight",
    "model.layers.{i}.self_attn.k_norm.weight": "layers.{i}.attn.k_norm.weight",
}


def config_fields(fields: ConfigFields) -> dict[str, Any]:
    llama.refuse_biases(fields)
    return {"qk_norm": True, "sliding_window": qwen2.sliding_window(fields)}


ARCH = Architecture(
    "qwen3",
    WEIGHT_NAMES,
    config_fields,
    defaults={"max_position_embeddings": 32768},
)
