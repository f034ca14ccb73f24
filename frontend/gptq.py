"""GPTQ checkpoints loaded as they are: every quantized linear becomes an int4_linear, no float round trip.

Entry point: `load_model(path)` / `load_hf(path)` (frontend/hf.py) reads the quantization config
with `quantization_config(directory, config)`; for GPTQ, `load_gptq_weights` returns the quantized
linears and the WeightSource. The LoadedModel's `quantized` then maps e.g. "layers.0.attn.q" to a
QuantizedLinear and `graph()` emits int4_linear reading, per linear (ops.Int4Linear):
  layers.0.attn.q.qweight  u4[N, K]     the 4-bit codes, ferrumc's packing (ir/int4.py)
  layers.0.attn.q.scales   [N, K/g]     in the checkpoint's dtype (f16 usually)
  layers.0.attn.q.zeros    f32[N, K/g]  asymmetric only: the integer zero points 0..15
  layers.0.attn.q.perm     i32[K]       act-order only; shared (named after the first) by the
                                        linears of one module whose g_idx are equal (q, k, v)
GPTQ stores, per linear `<prefix>`: qweight i32[K/8, N] (8 codes per word along K, low bits
first), qzeros i32[K/g, N/8] (packed along N), scales [K/g, N], g_idx i32[K], and means
  w[k, n] = scales[g_idx[k], n] * (q[k, n] - z[g_idx[k], n]).
checkpoint_format "gptq" (v1) stores z - 1 (subtracted from each packed word as one integer),
"gptq_v2" stores z. Act-order (desc_act) scatters each group over K: the columns are reordered
by the stable argsort of g_idx, moving the integer codes only, and the reorder becomes `perm`.
Modules without a qweight (lm_head, embeddings, norms) stay float through hf_weights.map_weights.
AWQ (GEMM) checkpoints load the same way; only their packing differs (frontend/awq.py).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..errors import CheckpointError, UnsupportedModel
from ..ir.int4 import Int4Format, pack_int4
from ..ir.types import DType, format_shape
from .awq import unpack_awq
from .config import DecoderConfig
from .hf_weights import map_weights, match_weight
from .model import QuantizedLinear, WeightSource
from .models import build_graph
from .models.spec import Architecture
from .quant_config import QuantConfig
from .safetensors_io import SafetensorsCheckpoint

# The tensors GPTQ stores in place of `<prefix>.weight`; `.bias` stays a float tensor.
PARTS = ("qweight", "qzeros", "scales", "g_idx")
_V1_OFFSET = np.uint32(0x11111111)  # one added to each of the 8 zero points of a word


def unpack_along_rows(words: np.ndarray) -> np.ndarray:
    """i32[R, C] of 8 codes per word, low bits first, along rows -> uint8[8R, C]."""
    u = np.ascontiguousarray(words).view(np.uint32)
    codes = np.stack([(u >> np.uint32(4 * j)) & np.uint32(0xF) for j in range(8)], axis=1)
    return codes.reshape(u.shape[0] * 8, u.shape[1]).astype(np.uint8)


def unpack_along_cols(words: np.ndarray) -> np.ndarray:
    """i32[R, C] of 8 codes per word, low bits first, along columns -> uint8[R, 8C]."""
    u = np.ascontiguousarray(words).view(np.uint32)
    codes = np.stack([(u >> np.uint32(4 * j)) & np.uint32(0xF) for j in range(8)], axis=-1)
    return codes.reshape(u.shape[0], u.shape[1] * 8).astype(np.uint8)


def zero_points(qzeros: np.ndarray, version: str) -> np.ndarray:
    """The zero points uint8[K/g, N] of a qzeros tensor; v1 words hold z - 1 per code, with borrows."""
    u = np.ascontiguousarray(qzeros).view(np.uint32)
    if version == "gptq":
        u = u + _V1_OFFSET  # uint32 arithmetic wraps as the v1 writer's subtraction did
    return unpack_along_cols(u)


def _dims(quant: QuantConfig, qweight: tuple[int, ...]) -> tuple[int, int]:
    """(K, N) of a linear from its qweight's shape: GPTQ packs along K, AWQ along N."""
    rows, cols = qweight
    return (rows, cols * 8) if quant.method == "awq" else (rows * 8, cols)


def _codes(quant: QuantConfig, qweight: np.ndarray) -> np.ndarray:
    """The codes uint8[K, N] of a qweight tensor."""
    return unpack_awq(qweight) if quant.method == "awq" else unpack_along_rows(qweight)


def _zeros(quant: QuantConfig, qzeros: np.ndarray) -> np.ndarray:
    """The zero points uint8[K/g, N] of a qzeros tensor."""
    return unpack_awq(qzeros) if quant.method == "awq" else zero_points(qzeros, quant.version)


def act_order_perm(g_idx: np.ndarray, group_size: int, where: str) -> np.ndarray | None:
    """The column order making each group contiguous (None when it already is), checking that
    g_idx puts exactly `group_size` columns in each group."""
    k = g_idx.shape[0]
    natural = np.arange(k) // group_size
    if np.array_equal(g_idx, natural):
        return None
    counts = np.bincount(g_idx.clip(0), minlength=k // group_size)
    if g_idx.min() < 0 or len(counts) != k // group_size or (counts != group_size).any():
        raise CheckpointError(
            f"{where}: g_idx does not put {group_size} columns in each of {k // group_size} groups "
            "(group sizes differ); the checkpoint is corrupt or not a GPTQ checkpoint"
        )
    perm = np.argsort(g_idx, kind="stable").astype(np.int32)
    assert np.array_equal(g_idx[perm], natural)
    return perm


@dataclass
class _Linear:
    """One quantized linear as the checkpoint stores it, planned before anything large is read."""

    prefix: str  # Hugging Face module name, e.g. model.layers.0.self_attn.q_proj
    name: str  # ferrumc linear name, e.g. layers.0.attn.q
    n: int
    k: int
    perm: np.ndarray | None
    scale_dtype: DType


def _linear_name(arch: Architecture, prefix: str, ckpt: SafetensorsCheckpoint) -> str:
    info = ckpt.tensors[f"{prefix}.qweight"]
    found = match_weight(arch, f"{prefix}.weight")
    groups = found[0].groupdict() if found else {}
    target = found[1] if found else None
    if not isinstance(target, str) or "e" in groups or not target.endswith(".weight"):
        what = "an MoE expert" if found else "no linear ferrumc knows"
        raise UnsupportedModel(
            f"tensor {info.name} in {info.file} quantizes {what} ({prefix}); ferrumc loads int4 "
            "attention, dense MLP and lm_head linears only"
        )
    return target.format(i=groups.get("i")).removesuffix(".weight")


def _tensor(ckpt: SafetensorsCheckpoint, name: str, dtypes: tuple[str, ...], shape: tuple) -> None:
    info = ckpt.tensors.get(name)
    if info is None:
        raise CheckpointError(
            f"tensor {name} is missing from {ckpt.directory}; a quantized linear needs "
            f"{', '.join(PARTS[:3])}; re-download the checkpoint"
        )
    if info.dtype not in dtypes:
        raise CheckpointError(
            f"tensor {name} in {info.file} has dtype {info.dtype}, expected {' or '.join(dtypes)}"
        )
    if info.shape != shape:
        raise CheckpointError(
            f"tensor {name} in {info.file} has shape {format_shape(info.shape)}, "
            f"expected {format_shape(shape)} from its qweight and group size"
        )


def _plan(
    ckpt: SafetensorsCheckpoint, arch: Architecture, quant: QuantConfig, prefix: str
) -> _Linear:
    """Check one linear's tensors against each other and read its g_idx (and symmetric zeros)."""
    g = quant.group_size
    qweight = ckpt.tensors[f"{prefix}.qweight"]
    if qweight.dtype != "I32" or len(qweight.shape) != 2:
        want = "I32[K, N/8]" if quant.method == "awq" else "I32[K/8, N] (pack_dtype int32)"
        raise CheckpointError(
            f"tensor {qweight.name} in {qweight.file} is {qweight.dtype}{format_shape(qweight.shape)}; "
            f"{quant.method.upper()} qweight must be {want}"
        )
    k, n = _dims(quant, qweight.shape)
    if k % g or n % 8:
        raise CheckpointError(
            f"tensor {qweight.name}: in dim {k} is not a multiple of group size {g} "
            f"or out dim {n} of 8"
        )
    _tensor(ckpt, f"{prefix}.scales", ("F16", "BF16", "F32"), (k // g, n))
    _tensor(ckpt, f"{prefix}.qzeros", ("I32",), (k // g, n // 8))
    perm = None
    if f"{prefix}.g_idx" in ckpt.tensors:
        _tensor(ckpt, f"{prefix}.g_idx", ("I32",), (k,))
        perm = act_order_perm(ckpt.read(f"{prefix}.g_idx"), g, f"tensor {prefix}.g_idx")
    if quant.symmetric:
        zeros = _zeros(quant, ckpt.read(f"{prefix}.qzeros"))
        if (zeros != 8).any():
            raise CheckpointError(
                f"tensor {prefix}.qzeros: {quant.source} says sym=true but the stored zero points "
                f"are not all 8 (found {int(zeros.min())}..{int(zeros.max())}, checkpoint_format "
                f"{quant.version!r}); set sym to false or fix checkpoint_format"
            )
    scale_dtype = ckpt.tensors[f"{prefix}.scales"].ferrum_dtype()
    return _Linear(prefix, _linear_name(arch, prefix, ckpt), n, k, perm, scale_dtype)


def _shared_perms(linears: list[_Linear]) -> dict[str, str]:
    """Perm weight name per linear: linears of one module (q, k, v) with equal g_idx share one."""
    names: dict[str, str] = {}
    seen: dict[str, list[tuple[np.ndarray, str]]] = {}
    for lin in linears:
        if lin.perm is None:
            continue
        module = lin.name.rsplit(".", 1)[0]
        same = [name for p, name in seen.get(module, []) if np.array_equal(p, lin.perm)]
        names[lin.name] = same[0] if same else f"{lin.name}.perm"
        if not same:
            seen.setdefault(module, []).append((lin.perm, names[lin.name]))
    return names


def _loaders(ckpt: SafetensorsCheckpoint, lin: _Linear, quant: QuantConfig) -> dict[str, Callable]:
    """Readers of one linear's int4 weights under ferrumc names (the perm is added by the caller)."""
    p = lin.prefix

    def qweight() -> np.ndarray:
        codes = _codes(quant, ckpt.read(f"{p}.qweight"))  # [K, N]
        if lin.perm is not None:
            codes = codes[lin.perm]  # integer reorder: group j // g is now contiguous
        return pack_int4(np.ascontiguousarray(codes.T))  # [N, K/2]

    def scales() -> np.ndarray:
        return np.ascontiguousarray(ckpt.read(f"{p}.scales").T)  # [N, K/g]

    def zeros() -> np.ndarray:
        z = _zeros(quant, ckpt.read(f"{p}.qzeros"))  # [K/g, N]
        return np.ascontiguousarray(z.T.astype(np.float32))

    out = {f"{lin.name}.qweight": qweight, f"{lin.name}.scales": scales}
    if not quant.symmetric:
        out[f"{lin.name}.zeros"] = zeros
    return out


def load_gptq_weights(
    ckpt: SafetensorsCheckpoint, arch: Architecture, config: DecoderConfig, quant: QuantConfig
) -> tuple[dict[str, QuantizedLinear], WeightSource]:
    """The quantized linears of a GPTQ checkpoint and every weight of its graph, int4 or float."""
    prefixes = [n.removesuffix(".qweight") for n in ckpt.tensors if n.endswith(".qweight")]
    if not prefixes:
        raise CheckpointError(
            f"{quant.source} declares {quant.method.upper()} quantization but {ckpt.directory} "
            "holds no .qweight tensor"
        )
    linears = [_plan(ckpt, arch, quant, p) for p in prefixes]
    # In graph order, so a shared perm is named after the first reader (q of q, k, v).
    order = {name: i for i, name in enumerate(build_graph(config).weight_types())}
    linears.sort(key=lambda lin: order.get(f"{lin.name}.weight", len(order)))
    perms = _shared_perms(linears)
    fmt = Int4Format(quant.group_size, quant.symmetric)
    origin = {"gptq": "GPTQ v1", "gptq_v2": "GPTQ v2", "gemm": "AWQ GEMM"}[quant.version]
    quantized = {
        lin.name: QuantizedLinear(fmt, lin.scale_dtype, perms.get(lin.name), origin)
        for lin in linears
    }
    expected = build_graph(config, quantized).weight_types()
    loaders: dict[str, Callable[[], np.ndarray]] = {}
    for lin in linears:
        want = expected[f"{lin.name}.qweight"]
        if want.shape != (lin.n, lin.k):
            raise CheckpointError(
                f"tensor {lin.prefix}.qweight holds a [{lin.n}, {lin.k}] (out, in) weight, but the "
                f"config expects {format_shape(want.shape)} for {lin.name}; config.json and weights disagree"
            )
        loaders.update(_loaders(ckpt, lin, quant))
        if lin.perm is not None and perms[lin.name] not in loaders:
            loaders[perms[lin.name]] = lambda perm=lin.perm: perm
    # The float rest maps as in any checkpoint, once GPTQ's own tensors are set aside.
    own = {f"{p}.{part}" for p in prefixes for part in PARTS}
    view = copy.copy(ckpt)
    view.tensors = {n: t for n, t in ckpt.tensors.items() if n not in own}
    floats = {n: t for n, t in expected.items() if n not in loaders}
    source = map_weights(view, arch, floats, config.tie_word_embeddings)
    storage = {n: f"{origin} int4" for n in loaders}
    return quantized, WeightSource(
        dict(expected),
        {**source.loaders, **loaders},
        source.unused,
        {**source.storage, **storage},
    )
