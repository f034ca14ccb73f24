"""A checkpoint's quantization config: config.json's `quantization_config`, or an older
quantize_config.json beside it; what the int4 loaders (frontend/gptq.py) need, checked."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import CheckpointError, UnsupportedModel
from ..ir.int4 import Int4Format
from .hf_tokenizer import read_json

METHODS = ("gptq", "awq")
GPTQ_VERSIONS = ("gptq", "gptq_v2")  # v1 stores zero points minus one, v2 as they are
LEGACY_FILE = "quantize_config.json"  # AutoGPTQ and early GPTQModel wrote the config here


@dataclass(frozen=True)
class QuantConfig:
    """A 4-bit weight-only quantization as a checkpoint declares it."""

    method: str  # "gptq" or "awq"
    group_size: int
    symmetric: bool
    desc_act: bool  # act-order; the g_idx tensors decide whether columns are really permuted
    version: str  # gptq: "gptq" (v1) or "gptq_v2"; awq: "gemm"
    source: str  # where it was read, for messages: "<dir>/config.json quantization_config"

    @property
    def format(self) -> Int4Format:
        return Int4Format(self.group_size, self.symmetric)


def quantization_config(directory: Path, config: Mapping[str, Any]) -> QuantConfig | None:
    """The quantization config of the checkpoint in `directory` whose config.json holds
    `config`, or None for a float checkpoint."""
    if isinstance(config.get("quantization_config"), Mapping):
        where = f"{Path(directory) / 'config.json'} quantization_config"
        return parse_quant_config(config["quantization_config"], where)
    legacy = Path(directory) / LEGACY_FILE
    if legacy.is_file():
        return parse_quant_config(read_json(legacy), str(legacy), default_method="gptq")
    return None


def _field(raw: Mapping[str, Any], source: str, key: str, kind: type, default: Any) -> Any:
    value = raw.get(key)
    if value is None:
        return default
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise CheckpointError(f"{source}: {key} must be {kind.__name__}, got {value!r}")
    return value


def parse_quant_config(
    raw: Mapping[str, Any], source: str, default_method: str | None = None
) -> QuantConfig:
    """Check a quantization config's fields; refuse, naming the field, what ferrumc cannot load."""
    method = _field(raw, source, "quant_method", str, default_method)
    if method is None:
        raise CheckpointError(
            f"{source}: quant_method is missing; expected one of {', '.join(METHODS)}"
        )
    method = method.lower()
    if method not in METHODS:
        raise UnsupportedModel(
            f"{source}: quant_method {method!r} is not supported; supported: {', '.join(METHODS)} "
            "(or a float checkpoint, quantized by `ferrumc compile -q int4`)"
        )
    # AutoAWQ spells bits and group size w_bit and q_group_size.
    bits = _field(raw, source, "bits", int, None) or _field(raw, source, "w_bit", int, 4)
    if bits != 4:
        raise UnsupportedModel(
            f"{source}: bits is {bits}; ferrumc loads 4-bit {method.upper()} checkpoints only"
        )
    group_size = _field(raw, source, "group_size", int, None) or _field(
        raw, source, "q_group_size", int, 128
    )
    if group_size not in Int4Format.GROUP_SIZES:
        what = "-1 (one group per row)" if group_size == -1 else str(group_size)
        sizes = ", ".join(map(str, Int4Format.GROUP_SIZES))
        raise UnsupportedModel(
            f"{source}: group_size {what} is not supported; ferrumc's int4 groups are {sizes} "
            "columns: re-quantize with one of them"
        )
    if raw.get("dynamic"):
        raise UnsupportedModel(
            f"{source}: dynamic (per-module bits or group sizes) is not supported; "
            "ferrumc loads checkpoints with one quantization for every module"
        )
    if raw.get("rotation"):
        raise UnsupportedModel(
            f"{source}: rotation {raw['rotation']!r} (weights stored rotated) is not supported"
        )
    if method == "awq":
        return _awq(raw, source, group_size)
    version = (
        _field(raw, source, "checkpoint_format", str, None)
        or _field(raw, source, "format", str, None)
        or "gptq"
    ).lower()
    if version not in GPTQ_VERSIONS or raw.get("is_marlin_format"):
        marlin = " (marlin)" if raw.get("is_marlin_format") else ""
        raise UnsupportedModel(
            f"{source}: checkpoint_format {version!r}{marlin} is not supported; "
            f"supported: {', '.join(GPTQ_VERSIONS)}"
        )
    pack = _field(raw, source, "pack_dtype", str, "int32").removeprefix("torch.")
    if pack != "int32":
        raise UnsupportedModel(f"{source}: pack_dtype {pack!r} is not supported; supported: int32")
    return QuantConfig(
        method=method,
        group_size=group_size,
        symmetric=_field(raw, source, "sym", bool, True),
        desc_act=_field(raw, source, "desc_act", bool, False),
        version=version,
        source=source,
    )


def _awq(raw: Mapping[str, Any], source: str, group_size: int) -> QuantConfig:
    """AWQ: GEMM packing only, always with zero points."""
    version = _field(raw, source, "version", str, "gemm").lower()
    if version != "gemm":
        raise UnsupportedModel(
            f"{source}: AWQ version {version!r} is not supported; supported: gemm"
        )
    if not _field(raw, source, "zero_point", bool, True):
        raise UnsupportedModel(f"{source}: AWQ without zero points is not supported")
    return QuantConfig("awq", group_size, False, False, version, source)
