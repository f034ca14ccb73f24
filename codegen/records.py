"""JSON records of the frontend's dataclasses (DecoderConfig, TokenizerInfo) as the bundle manifest stores them."""

from __future__ import annotations

import dataclasses
from typing import Any

from ..frontend.config import DecoderConfig
from ..frontend.model import TokenizerInfo
from ..ir.rope import RopeScaling
from ..ir.types import DType

# TokenizerInfo fields stored in the manifest; the tokenizer itself is the bundle's tokenizer.json.
TOKENIZER_FIELDS = tuple(
    f.name for f in dataclasses.fields(TokenizerInfo) if f.name != "tokenizer_json"
)


def config_record(config: DecoderConfig) -> dict[str, Any]:
    """The config as plain JSON values: enums by value, tuples as lists, rope scaling as a dict."""
    record = dataclasses.asdict(config)
    record["weight_dtype"] = config.weight_dtype.value
    record["moe_layers"] = list(config.moe_layers)
    return record


def config_from_record(record: dict[str, Any]) -> DecoderConfig:
    fields = dict(record)
    if fields.get("rope_scaling") is not None:
        fields["rope_scaling"] = RopeScaling(**fields["rope_scaling"])
    fields["weight_dtype"] = DType(fields["weight_dtype"])
    fields["moe_layers"] = tuple(fields["moe_layers"])
    return DecoderConfig(**fields)


def tokenizer_record(info: TokenizerInfo) -> dict[str, Any]:
    """Everything but the tokenizer JSON (a file of its own in the bundle)."""
    record = {name: getattr(info, name) for name in TOKENIZER_FIELDS}
    record["eos_token_ids"] = list(info.eos_token_ids)
    return record


def tokenizer_from_record(record: dict[str, Any], tokenizer_json: str) -> TokenizerInfo:
    fields = {name: record[name] for name in TOKENIZER_FIELDS if name in record}
    fields["eos_token_ids"] = tuple(fields.get("eos_token_ids", ()))
    return TokenizerInfo(tokenizer_json=tokenizer_json, **fields)
