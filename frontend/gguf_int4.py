"""GGUF Q4_0 and Q4_1 tensors as ferrumc int4 group-32 weights: the codes are moved, not re-rounded.

A block covers 32 consecutive elements of a row: f16 d (Q4_1: then f16 m), then 16 bytes whose
byte j holds element j in its low nibble and element j + 16 in its high nibble.
  Q4_0: w = d * (q - 8)   -> symmetric: scale d, the implicit zero 8
  Q4_1: w = d * q + m     -> asymmetric: scale d, zero -m / d (a float); a block with d = 0 is the
                             constant m, stored exactly as codes 1, zero 0, scale m
"""

from __future__ import annotations

import gguf
import numpy as np

from ..ir.int4 import pack_int4

Q = gguf.GGMLQuantizationType
GROUP = 32
INT4_TYPES = (Q.Q4_0, Q.Q4_1)
_BLOCK_BYTES = {Q.Q4_0: 18, Q.Q4_1: 20}


def _codes(qs: np.ndarray) -> np.ndarray:
    """uint8[..., 16] block bytes -> uint8[..., 32] codes in element order."""
    return np.concatenate([qs & np.uint8(0x0F), qs >> np.uint8(4)], axis=-1)


def _f16(blocks: np.ndarray, at: int) -> np.ndarray:
    """The f16 field at byte offset `at` of every block: [rows, groups] f16."""
    return np.ascontiguousarray(blocks[..., at : at + 2]).view(np.float16)[..., 0]


def _blocks(data: np.ndarray, qtype: Q, rows: int, cols: int) -> np.ndarray:
    assert qtype in INT4_TYPES, qtype
    return np.asarray(data, dtype=np.uint8).reshape(rows, cols // GROUP, _BLOCK_BYTES[qtype])


def q4_qweight(data: np.ndarray, qtype: Q, rows: int, cols: int) -> np.ndarray:
    """The codes of a Q4_0 / Q4_1 tensor's raw blocks, packed our way: u4 as uint8[rows, cols/2]."""
    blocks = _blocks(data, qtype, rows, cols)
    codes = _codes(blocks[..., -16:])  # [rows, groups, 32]
    if qtype == Q.Q4_1:
        codes = np.where((_f16(blocks, 0) == 0)[..., None], np.uint8(1), codes)
    return pack_int4(codes.reshape(rows, cols))


def q4_scales(data: np.ndarray, qtype: Q, rows: int, cols: int) -> np.ndarray:
    """f16[rows, cols/32]: d (Q4_1 blocks with d = 0: m)."""
    blocks = _blocks(data, qtype, rows, cols)
    d = _f16(blocks, 0)
    return d if qtype == Q.Q4_0 else np.where(d == 0, _f16(blocks, 2), d)


def q4_zeros(data: np.ndarray, qtype: Q, rows: int, cols: int) -> np.ndarray:
    """f32[rows, cols/32] zero points of a Q4_1 tensor: -m / d (0 where d = 0)."""
    assert qtype == Q.Q4_1, qtype
    blocks = _blocks(data, qtype, rows, cols)
    d, m = _f16(blocks, 0).astype(np.float32), _f16(blocks, 2).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(d == 0, np.float32(0), -m / d).astype(np.float32)
