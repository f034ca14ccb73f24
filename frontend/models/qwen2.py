"""Qwen2: Llama with biases on the q, k and v projections, and an optional sliding window."""

from __future__ import annotations

from typing import Any

from ...errors import UnsupportedModel
from . import llama
from .spec import Architecture, ConfigFields

WEIGHT_NAMES = {
    **llama.WEIGHT_NAMES,
    "model.layers.{i}.self_attn.q_proj.bias": "layers.{i}.attn.q.bias",
    "model.layers.{i}.self_attn.k_proj.bias": "layers.{i}.attn.k.bias",
    "model.layers.{i}.self_attn.v_proj.bias": "layers.{i}.attn.v.bias",
}


def sliding_window(fields: ConfigFields) -> int | None:
    """The window every layer uses, by transformers' rule: layers >= max_window_layers slide.

    ferrumc has one window for all layers, so a model whose first layers attend fully and whose
    later ones slide is refused, unless the window is never reached (>= max_position_embeddings).
    """
    window = fields.get("sliding_window", int)
    if not fields.get("use_sliding_window", bool, False) or window is None:
        return None
    num_layers = fields.require("num_hidden_layers")
    layer_types = fields.get("layer_types", list)
    if layer_types is None:
        first = fields.get("max_window_layers", int, 28)
        layer_types = [
            "sliding_attention" if i >= first else "full_attention" for i in range(num_layers)
        ]
    sliding = {t == "sliding_attention" for t in layer_types}
    if sliding == {True}:
        return window
    if sliding == {False} or window >= fields.get("max_position_embeddings", int, 32768):
        return None
    raise UnsupportedModel(
        f"{fields.source}: sliding_window={window} applies to only some layers "
        "(max_window_layers / layer_types); ferrumc needs one window for every layer"
    )


def config_fields(fields: ConfigFields) -> dict[str, Any]:
    return {"attention_bias": True, "sliding_window": sliding_window(fields)}


ARCH = Architecture(
    "qwen2",
    WEIGHT_NAMES,
    config_fields,
    defaults={"max_position_embeddings": 32768},
)
