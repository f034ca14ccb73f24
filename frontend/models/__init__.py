"""The architecture registry, keyed by Hugging Face `model_type`, and the graph builder over it."""

from __future__ import annotations

from collections.abc import Mapping

from ...errors import UnsupportedModel
from ...ir.graph import Graph
from ..config import DecoderConfig
from ..model import QuantizedLinear
from . import llama, mistral, qwen2, qwen3, qwen3_moe
from .decoder import build_decoder
from .spec import Architecture

# The one place an architecture is registered.
ARCHITECTURES: dict[str, Architecture] = {
    arch.model_type: arch
    for arch in (llama.ARCH, mistral.ARCH, qwen2.ARCH, qwen3.ARCH, qwen3_moe.ARCH)
}


def supported() -> list[str]:
    """The supported `model_type`s, sorted."""
    return sorted(ARCHITECTURES)


def architecture(model_type: str) -> Architecture:
    if model_type not in ARCHITECTURES:
        raise UnsupportedModel(
            f"model_type {model_type!r} is not supported; supported: {', '.join(supported())}"
        )
    return ARCHITECTURES[model_type]


def build_graph(
    config: DecoderConfig, quantized: Mapping[str, QuantizedLinear] | None = None
) -> Graph:
    """The forward graph (tokens, positions -> logits) of a model with this config; the linears
    named in `quantized` read int4 weights (int4_linear) instead of float ones."""
    return build_decoder(config, architecture(config.model_type).sparse_mlp, quantized)


__all__ = ["ARCHITECTURES", "Architecture", "architecture", "build_graph", "supported"]
