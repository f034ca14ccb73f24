"""Synthetic GPTQ (and AWQ GEMM) checkpoints for tests: a tiny model's linears rounded to 4 bits
and stored as GPTQ stores them (Hugging Face names, packed int32 words), next to the float weights
they stand for.

The packing here is written from GPTQ's description, independently of frontend/gptq.py:
qweight i32[K/8, N] holds code k = 8i + j of column n in bits 4j..4j+3 of word [i, n]; qzeros
i32[K/g, N/8] packs zero points along N the same way; v1 ("gptq") subtracts 0x11111111 from each
zeros word (zero point minus one, borrowing across codes) as GPTQModel does when it saves v1.
The dequantized weight is w[k, n] = scales[g_idx[k], n] * (q[k, n] - z[g_idx[k], n]).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

PROJECTIONS = {  # HF module -> the modules reading the same input (they share g_idx in real GPTQ)
    "self_attn.q_proj": "attn_in",
    "self_attn.k_proj": "attn_in",
    "self_attn.v_proj": "attn_in",
    "self_attn.o_proj": "o_in",
    "mlp.gate_proj": "mlp_in",
    "mlp.up_proj": "mlp_in",
    "mlp.down_proj": "down_in",
}


@dataclass(frozen=True)
class GPTQSpec:
    group_size: int = 32
    sym: bool = True
    act_order: bool = False
    version: str = "gptq"  # "gptq" (v1) or "gptq_v2"
    # Real GPTQ gives linears of one input equal g_idx (same Hessian); False draws one per linear.
    shared_g_idx: bool = True
    seed: int = 0
    method: str = "gptq"  # or "awq": GEMM packing along N, zero points as they are, no g_idx


# AutoAWQ's GEMM packing: bits 4i of word c hold column 8c + AWQ_ORDER[i].
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)


def pack_rows(codes: np.ndarray) -> np.ndarray:
    """uint[K, N] codes 0..15 -> i32[K/8, N], code 8i + j in bits 4j of word i."""
    words = np.zeros((codes.shape[0] // 8, codes.shape[1]), np.uint32)
    for j in range(8):
        words |= codes[j::8].astype(np.uint32) << np.uint32(4 * j)
    return words.view(np.int32)


def pack_cols(codes: np.ndarray) -> np.ndarray:
    """uint[R, N] codes 0..15 -> i32[R, N/8], column 8c + j in bits 4j of word c."""
    words = np.zeros((codes.shape[0], codes.shape[1] // 8), np.uint32)
    for j in range(8):
        words |= codes[:, j::8].astype(np.uint32) << np.uint32(4 * j)
    return words.view(np.int32)


def pack_awq(codes: np.ndarray) -> np.ndarray:
    """uint[R, N] codes 0..15 -> i32[R, N/8] in AWQ's interleaved column order."""
    words = np.zeros((codes.shape[0], codes.shape[1] // 8), np.uint32)
    for i, column in enumerate(AWQ_ORDER):
        words |= codes[:, column::8].astype(np.uint32) << np.uint32(4 * i)
    return words.view(np.int32)


def quantize(w: np.ndarray, g_idx: np.ndarray, spec: GPTQSpec) -> dict[str, np.ndarray]:
    """Round-to-nearest GPTQ tensors of one float weight w[N, K]: q[K, N], z[K/g, N], scales f16."""
    wt = w.T.astype(np.float64)  # [K, N]
    groups = wt.shape[0] // spec.group_size
    lo = np.stack([np.minimum(wt[g_idx == j].min(0), 0) for j in range(groups)])  # [K/g, N]
    hi = np.stack([np.maximum(wt[g_idx == j].max(0), 0) for j in range(groups)])
    if spec.sym:
        scales = (2 * np.maximum(-lo, hi) / 15).astype(np.float16)
        z = np.full(scales.shape, 8)
    else:
        scales = ((hi - lo) / 15).astype(np.float16)
        z = np.clip(np.round(-lo / scales.astype(np.float64)), 0, 15).astype(np.int64)
        z[0, :8], z[-1, -8:] = 0, 15  # the extremes: v1 stores 0 as -1, with a borrow
    s = scales.astype(np.float64)[g_idx]
    q = np.clip(np.round(wt / s) + z[g_idx], 0, 15).astype(np.int64)
    return {"q": q, "z": z, "scales": scales}


def dequantize(q: np.ndarray, z: np.ndarray, scales: np.ndarray, g_idx: np.ndarray) -> np.ndarray:
    """GPTQ's formula, in f32: w[k, n] = scales[g_idx[k], n] * (q[k, n] - z[g_idx[k], n]); -> [N, K]."""
    w = scales.astype(np.float32)[g_idx] * (q - z[g_idx]).astype(np.float32)
    return np.ascontiguousarray(w.T)


def gptq_checkpoint(src: Path, dst: Path, spec: GPTQSpec, reference: Path | None = None) -> Path:
    """Copy the float checkpoint `src` to `dst` with every layer projection in GPTQ form; with
    `reference`, also write there the float checkpoint whose projections are the dequantized ones."""
    rng = np.random.default_rng(spec.seed)
    shutil.copytree(src, dst)
    tensors = load_file(src / "model.safetensors")
    floats = dict(tensors)
    g_idxs: dict[str, np.ndarray] = {}
    for name in list(tensors):
        module = next((m for m in PROJECTIONS if name.endswith(f"{m}.weight")), None)
        if module is None:
            continue
        prefix = name.removesuffix(".weight")
        w = tensors.pop(name)
        k = w.shape[1]
        key = prefix.rsplit(".", 2)[0] + PROJECTIONS[module] if spec.shared_g_idx else prefix
        if key not in g_idxs:
            order = rng.permutation(k) if spec.act_order else np.arange(k)
            g_idx = np.empty(k, np.int32)
            g_idx[order] = np.arange(k) // spec.group_size  # column order[i] is in group i // g
            g_idxs[key] = g_idx
        g_idx = g_idxs[key]
        t = quantize(w, g_idx, spec)
        tensors[f"{prefix}.scales"] = t["scales"]
        if spec.method == "awq":
            tensors[f"{prefix}.qweight"] = pack_awq(t["q"])
            tensors[f"{prefix}.qzeros"] = pack_awq(t["z"])
        else:
            zeros = pack_cols(t["z"]).view(np.uint32)
            if spec.version == "gptq":
                zeros = zeros - np.uint32(0x11111111)
            tensors[f"{prefix}.qweight"] = pack_rows(t["q"])
            tensors[f"{prefix}.qzeros"] = zeros.view(np.int32)
            tensors[f"{prefix}.g_idx"] = g_idx
        floats[name] = dequantize(t["q"], t["z"], t["scales"], g_idx)
    save_file(tensors, str(dst / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((dst / "config.json").read_text())
    config["quantization_config"] = {
        "quant_method": "gptq",
        "bits": 4,
        "group_size": spec.group_size,
        "desc_act": spec.act_order,
        "sym": spec.sym,
        "checkpoint_format": spec.version,
        "pack_dtype": "int32",
    }
    if spec.method == "awq":
        config["quantization_config"] = {
            "quant_method": "awq",
            "bits": 4,
            "group_size": spec.group_size,
            "zero_point": True,
            "version": "gemm",
        }
    (dst / "config.json").write_text(json.dumps(config, indent=2))
    if reference is not None:
        shutil.copytree(src, reference)
        save_file(floats, str(reference / "model.safetensors"), metadata={"format": "pt"})
    return dst
