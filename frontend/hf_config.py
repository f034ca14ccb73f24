"""Read a Hugging Face config.json (transformers 4.x or 5.x form) into a DecoderConfig."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import CheckpointError, UnsupportedModel
from ..ir.rope import ROPE_KINDS, RopeScaling
from ..ir.types import DType
from .config import DecoderConfig
from .models import architecture
from .models.spec import ConfigFields

# torch dtype names as config.json spells them (with or without "torch.").
WEIGHT_DTYPES = {"float32": DType.f32, "float16": DType.f16, "bfloat16": DType.bf16}

# Transformers' defaults for optional fields, where every supported architecture agrees.
DEFAULTS: dict[str, Any] = {
    "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
    "hidden_act": "silu",
}

# RopeScaling fields and the config key each comes from (the same name, except the kind).
_ROPE_FIELDS = {
    "factor": float,
    "low_freq_factor": float,
    "high_freq_factor": float,
    "original_max_position_embeddings": int,
    "beta_fast": float,
    "beta_slow": float,
    "mscale": float,
    "mscale_all_dim": float,
    "attention_factor": float,
    "truncate": bool,
}
# What each scaling kind cannot do without.
_ROPE_REQUIRED = {
    "linear": ("factor",),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor"),
}


def load_hf_config(path: Path) -> DecoderConfig:
    """Parse `path` (a config.json) into a DecoderConfig."""
    try:
        raw = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path} does not exist") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path} must hold a JSON object")
    return parse_hf_config(raw, Path(path))


def parse_hf_config(raw: Mapping[str, Any], source: Path) -> DecoderConfig:
    """Build the DecoderConfig from config.json's contents; `source` names the file in errors."""
    f = ConfigFields(raw, source)
    arch = architecture(f.require("model_type", str))
    defaults = {**DEFAULTS, **arch.defaults}
    hidden, heads = f.require("hidden_size"), f.require("num_attention_heads")
    head_dim = f.get("head_dim", int)
    if head_dim is None:
        if hidden % heads:
            raise CheckpointError(
                f"{source}: hidden_size {hidden} is not a multiple of num_attention_heads {heads}; "
                "head_dim must be given"
            )
        head_dim = hidden // heads
    kv_heads = f.get("num_key_value_heads", int, heads)
    if heads % kv_heads:
        raise CheckpointError(
            f"{source}: num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}"
        )
    max_positions = f.get("max_position_embeddings", int, defaults["max_position_embeddings"])
    theta, scaling, partial = _rope(f, defaults["rope_theta"], max_positions)
    fields: dict[str, Any] = {
        "model_type": arch.model_type,
        "vocab_size": f.require("vocab_size"),
        "hidden_size": hidden,
        "num_layers": f.require("num_hidden_layers"),
        "num_heads": heads,
        "num_kv_heads": kv_heads,
        "head_dim": head_dim,
        "intermediate_size": f.require("intermediate_size"),
        "rms_norm_eps": f.get("rms_norm_eps", float, defaults["rms_norm_eps"]),
        "rope_theta": theta,
        "rope_scaling": scaling,
        "partial_rotary_factor": partial,
        "max_position_embeddings": max_positions,
        "tie_word_embeddings": f.get("tie_word_embeddings", bool, defaults["tie_word_embeddings"]),
        "hidden_act": f.get("hidden_act", str, defaults["hidden_act"]),
        "weight_dtype": _weight_dtype(f),
    }
    fields.update(arch.config_fields(f))
    return DecoderConfig(**fields)


def _weight_dtype(f: ConfigFields) -> DType:
    # transformers 5 writes "dtype"; 4.x wrote "torch_dtype".
    name = f.get("dtype", str) or f.get("torch_dtype", str) or "float32"
    name = name.removeprefix("torch.")
    if name not in WEIGHT_DTYPES:
        raise UnsupportedModel(
            f"{f.source}: weight dtype {name!r} is not supported; valid: {', '.join(WEIGHT_DTYPES)}"
        )
    return WEIGHT_DTYPES[name]


def _rope(
    f: ConfigFields, default_theta: float, max_positions: int
) -> tuple[float, RopeScaling | None, float]:
    """(theta, scaling, partial_rotary_factor) from rope_scaling + rope_theta (4.x) or rope_parameters (5.x)."""
    key = "rope_scaling" if f.raw.get("rope_scaling") else "rope_parameters"
    params = f.get(key, dict, {})
    if params and all(isinstance(v, dict) for v in params.values()):
        raise UnsupportedModel(
            f"{f.source}: {key} differs per layer type ({', '.join(params)}); "
            "ferrumc supports one rotary embedding for all layers"
        )
    p = ConfigFields(params, f.source)
    theta = p.get("rope_theta", float) or f.get("rope_theta", float, default_theta)
    partial = p.get("partial_rotary_factor", float) or f.get("partial_rotary_factor", float, 1.0)
    kind = p.get("rope_type", str) or p.get("type", str) or "default"
    if kind not in ROPE_KINDS:
        raise UnsupportedModel(
            f"{f.source}: {key}.rope_type {kind!r} is not supported; valid: {', '.join(ROPE_KINDS)}"
        )
    if kind == "default":
        return theta, None, partial
    values = {name: p.get(name, kind_) for name, kind_ in _ROPE_FIELDS.items()}
    for name in _ROPE_REQUIRED.get(kind, ()):
        if values[name] is None:
            raise CheckpointError(f"{f.source}: {key} of type {kind!r} needs {name!r}")
    if kind in ("llama3", "yarn") and values["original_max_position_embeddings"] is None:
        # transformers falls back to max_position_embeddings, as here.
        values["original_max_position_embeddings"] = max_positions
    if kind == "yarn" and values["factor"] is None:
        values["factor"] = max_positions / values["original_max_position_embeddings"]
    if values["truncate"] is None:
        values["truncate"] = True
    return theta, RopeScaling(kind=kind, **values), partial
