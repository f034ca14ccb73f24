"""What `ferrumc inspect` says about a loaded checkpoint's quantization: the int4 formats, act-order,
which weights stay float, and the bytes of each kind."""

from __future__ import annotations

import re
from collections import Counter

from ..ir.types import TensorType, storage_shape
from .model import LoadedModel, QuantizedLinear
from .models.decoder import EMBED

_LAYER = re.compile(r"^layers\.\d+\.")
_INT4_PARTS = ("qweight", "scales", "zeros")


def storage_bytes(t: TensorType) -> int:
    """Bytes a weight of this type takes (u4: half a byte per element)."""
    count = 1
    for d in storage_shape(t.dtype, t.shape):
        count *= int(d)
    return count * t.dtype.numpy.itemsize


def _int4_names(loaded: LoadedModel) -> dict[str, str]:
    """Every weight an int4 linear reads -> its role: "q", "scales", "zeros" or "perm"."""
    roles = {}
    for name, quant in loaded.quantized.items():
        for part in _INT4_PARTS:
            if f"{name}.{part}" in loaded.weights.types:
                roles[f"{name}.{part}"] = "q" if part == "qweight" else part
        if quant.perm is not None:
            roles[quant.perm] = "perm"
    return roles


def int4_aux_names(loaded: LoadedModel) -> set[str]:
    """The scales, zeros and perm weights of int4 linears (not the codes)."""
    return {n for n, role in _int4_names(loaded).items() if role != "q"}


def num_parameters(loaded: LoadedModel) -> int:
    """Parameters of the model as trained: an int4 linear counts its N x K weight, not its scales."""
    roles = _int4_names(loaded)
    return sum(t.numel() for n, t in loaded.weights.types.items() if roles.get(n, "q") == "q")


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"


def quantization_lines(loaded: LoadedModel) -> list[str]:
    """`inspect` lines: "quantization:", then for int4 checkpoints "int4 bytes:" and "float:"."""
    if not loaded.quantized:
        return ["quantization:  none (float weights)"]

    def kind(q: QuantizedLinear) -> str:
        return f"{q.origin + ', ' if q.origin else ''}{q.format}"

    # A GGUF's int4 token table is quantized too, but it is a lookup, not a linear.
    table = loaded.quantized.get(EMBED)
    kinds = Counter(kind(q) for name, q in loaded.quantized.items() if name != EMBED)
    parts = {k: f"{k}: {n} linears" for k, n in kinds.most_common()}
    if table is not None:
        k = kind(table)
        parts[k] = f"{parts[k]} and the embedding" if k in parts else f"{k}: the embedding"
    act_order = sum(q.perm is not None for q in loaded.quantized.values())
    lines = [
        "quantization:  "
        + "; ".join(parts.values())
        + (f"; act-order (perm) on {act_order}" if act_order else "")
    ]
    roles = _int4_names(loaded)
    by_role: Counter[str] = Counter()
    float_bytes, float_names = 0, {}
    for name, t in loaded.weights.types.items():
        if name in roles:
            by_role[roles[name]] += storage_bytes(t)
        else:
            float_bytes += storage_bytes(t)
            float_names[_LAYER.sub("layers.*.", name)] = None
    lines.append("int4 bytes:    " + ", ".join(f"{role} {_mib(n)}" for role, n in by_role.items()))
    lines.append(f"float:         {_mib(float_bytes)} in {', '.join(float_names)}")
    return lines
