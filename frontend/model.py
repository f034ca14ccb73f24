"""What every frontend returns: architecture, lazily read weights under ferrumc names, tokenizer."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..ir.graph import Graph
from ..ir.int4 import Int4Format
from ..ir.types import DType, TensorType, storage_shape
from .config import DecoderConfig


@dataclass
class WeightSource:
    """Weights by ferrumc name: types known up front, data read (and converted) only on `load`."""

    types: dict[str, TensorType]
    loaders: dict[str, Callable[[], np.ndarray]]
    # Checkpoint tensors deliberately not used (e.g. rotary inv_freq buffers), for `inspect`.
    unused: list[str] = field(default_factory=list)
    # How the checkpoint stores each tensor when that differs from `types` (GGUF: "Q4_1", ...).
    storage: dict[str, str] = field(default_factory=dict)

    def load(self, name: str) -> np.ndarray:
        array = self.loaders[name]()
        expected = self.types[name]
        # u4 arrives packed, two codes per byte (ir/int4.py).
        shape = storage_shape(expected.dtype, expected.shape)
        assert array.shape == shape, f"{name}: loaded {array.shape}, declared {expected}"
        return array

    def __contains__(self, name: object) -> bool:
        return name in self.types

    def num_parameters(self) -> int:
        return sum(t.numel() for t in self.types.values())


@dataclass(frozen=True)
class QuantizedLinear:
    """A linear the checkpoint stores in int4, loaded as it is: the graph reads `<name>.qweight`
    (u4[N, K]), `<name>.scales` ([N, K/g] in `scale_dtype`), `<name>.zeros` (f32[N, K/g], asymmetric
    only) and, for act-order checkpoints, the i32[K] weight named `perm` (see ops.Int4Linear)."""

    format: Int4Format
    scale_dtype: DType = DType.f16
    # Linears reading one input with equal permutations share one perm weight, so they can fuse.
    perm: str | None = None
    # Where it came from, for `ferrumc inspect` ("GPTQ v1", "GGUF Q4_0", ...).
    origin: str = ""


@dataclass
class TokenizerInfo:
    """A `tokenizers` tokenizer (as JSON) plus the chat and special-token facts around it."""

    tokenizer_json: str
    chat_template: str | None = None
    bos_token: str | None = None
    eos_token: str | None = None
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int | None = None
    add_bos_token: bool = False
    # Extra variables the chat template may read (e.g. tokenizer_config's special tokens).
    template_vars: dict[str, str] = field(default_factory=dict)


@dataclass
class LoadedModel:
    """A checkpoint read by a frontend, ready to be lowered."""

    source: Path
    format: str  # "hf" or "gguf"
    config: DecoderConfig
    weights: WeightSource
    tokenizer: TokenizerInfo | None
    generation: dict[str, object] = field(default_factory=dict)
    # Linears kept in int4 as the checkpoint stores them, by ferrumc name ("layers.0.attn.q"), and
    # "embed" for a token embedding table kept in int4 (the lookup is int4_embedding).
    quantized: dict[str, QuantizedLinear] = field(default_factory=dict)

    def graph(self) -> Graph:
        from .models import build_graph

        return build_graph(self.config, self.quantized)
