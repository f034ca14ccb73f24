"""Packed int4 (`u4`) storage: two 4-bit values per byte along the last axis, low nibble first.

Element 2i of a row lives in the low nibble of byte i and element 2i+1 in its high nibble,
so `pack_int4` halves the last axis and `unpack_int4` doubles it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np


def pack_int4(values: np.ndarray) -> np.ndarray:
    """Pack integers in 0..15 (last axis even) into uint8 bytes: [..., K] -> [..., K // 2]."""
    values = np.asarray(values)
    if values.ndim == 0 or values.shape[-1] % 2:
        raise ValueError(f"int4 packing needs an even last axis, got shape {values.shape}")
    if not np.issubdtype(values.dtype, np.integer):
        raise ValueError(f"int4 packing needs integers, got {values.dtype}")
    if values.size and (values.min() < 0 or values.max() > 15):
        raise ValueError(f"int4 values must be in 0..15, got range {values.min()}..{values.max()}")
    nibbles = values.astype(np.uint8)
    return (nibbles[..., 0::2] | (nibbles[..., 1::2] << 4)).astype(np.uint8)


def unpack_int4(packed: np.ndarray) -> np.ndarray:
    """Unpack uint8 bytes into their nibbles: [..., K // 2] -> uint8 [..., K] with values 0..15."""
    packed = np.asarray(packed)
    if packed.dtype != np.uint8:
        raise ValueError(f"packed int4 must be uint8, got {packed.dtype}")
    out = np.empty((*packed.shape[:-1], packed.shape[-1] * 2), dtype=np.uint8)
    out[..., 0::2] = packed & 0x0F
    out[..., 1::2] = packed >> 4
    return out


@dataclass(frozen=True)
class Int4Format:
    """How a linear's weights are stored in 4 bits: one scale (and, asymmetric, one zero point)
    per `group_size` consecutive input columns of each output row."""

    group_size: int = 32
    symmetric: bool = True

    GROUP_SIZES: ClassVar[tuple[int, ...]] = (32, 64, 128)

    def __post_init__(self) -> None:
        if self.group_size not in self.GROUP_SIZES:
            sizes = ", ".join(map(str, self.GROUP_SIZES))
            raise ValueError(f"int4 group size must be one of {sizes}, got {self.group_size}")

    def __str__(self) -> str:
        scheme = "symmetric" if self.symmetric else "asymmetric"
        return f"int4 group {self.group_size} {scheme}"
