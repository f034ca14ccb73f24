"""The user's int4 choice (`ferrumc compile -q int4 ...`): the stored format and the algorithm
that picks the codes, turned into the quantize pass the pipeline runs."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import PassError
from ..ir.int4 import Int4Format
from .base import Pass
from .calibration import DEFAULT_CALIBRATION, text_sha256

# "rtn" rounds every weight to the nearest level; "gptq" corrects each rounding error in the
# weights not yet quantized, using activations from calibration text (slower, more accurate).
QUANTIZERS = ("rtn", "gptq")


@dataclass(frozen=True)
class GPTQOptions:
    """What GPTQ calibrates on, and how."""

    # Process columns by descending activation energy (groups stay contiguous: static groups).
    act_order: bool = False
    # A text file to calibrate on; None is the public-domain text shipped in passes/data.
    calibration: Path | None = None
    num_sequences: int = 8
    sequence_length: int = 256

    def __post_init__(self) -> None:
        if self.num_sequences < 1 or self.sequence_length < 2:
            raise PassError(
                f"GPTQ needs at least one calibration sequence of 2 tokens, got "
                f"{self.num_sequences} x {self.sequence_length}"
            )


@dataclass(frozen=True)
class Int4Quantization:
    """Weight-only int4 for the float linears: `format` says how they are stored, `quantizer`
    how the 4-bit codes are chosen."""

    format: Int4Format = field(default_factory=Int4Format)
    quantizer: str = "rtn"
    gptq: GPTQOptions = field(default_factory=GPTQOptions)

    def __post_init__(self) -> None:
        if self.quantizer not in QUANTIZERS:
            raise PassError(
                f"unknown int4 quantizer {self.quantizer!r}; use one of {', '.join(QUANTIZERS)}"
            )
        if self.quantizer != "gptq" and self.gptq != GPTQOptions():
            raise PassError("act-order and calibration options apply to the gptq quantizer only")

    def quantize_pass(self) -> Pass:
        if self.quantizer == "gptq":
            from .quantize_int4_gptq import QuantizeInt4GPTQ

            return QuantizeInt4GPTQ(self.format, self.gptq)
        from .quantize_int4_rtn import QuantizeInt4RTN

        return QuantizeInt4RTN(self.format)

    def record(self) -> dict[str, Any]:
        """JSON for the manifest and the compile cache's key (the calibration text by content)."""
        out: dict[str, Any] = {
            "method": "int4",
            "group_size": self.format.group_size,
            "scheme": "symmetric" if self.format.symmetric else "asymmetric",
            "quantizer": self.quantizer,
        }
        if self.quantizer == "gptq":
            text = self.gptq.calibration or DEFAULT_CALIBRATION
            out |= {
                "act_order": self.gptq.act_order,
                "calibration": "shipped" if self.gptq.calibration is None else str(text),
                "calibration_sha256": text_sha256(text),
                "calibration_tokens": [self.gptq.num_sequences, self.gptq.sequence_length],
            }
        return out

    def __str__(self) -> str:
        order = " act-order" if self.gptq.act_order else ""
        return f"{self.format}, {self.quantizer}{order}"
