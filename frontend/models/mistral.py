"""Mistral: Llama with a sliding attention window on every layer."""

from __future__ import annotations

from typing import Any

from . import llama
from .spec import Architecture, ConfigFields

WEIGHT_NAMES = llama.WEIGHT_NAMES

# Transformers' MistralConfig default, used when config.json omits the key (null means no window).
DEFAULT_WINDOW = 4096


def config_fields(fields: ConfigFields) -> dict[str, Any]:
    if "sliding_window" not in fields.raw:
        return {"sliding_window": DEFAULT_WINDOW}
    return {"sliding_window": fields.get("sliding_window", int)}


ARCH = Architecture(
    "mistral",
    WEIGHT_NAMES,
    config_fields,
    defaults={"max_position_embeddings": 4096 * 32},
)
