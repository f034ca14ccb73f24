"""Rotary embedding frequencies, with the scalings Hugging Face's `rope_parameters` define."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

ROPE_KINDS = ("default", "linear", "llama3", "yarn")


@dataclass(frozen=True)
class RopeScaling:
    """A rope scaling as HF's rope_parameters/rope_scaling describes it (fields unused by a kind stay None)."""

    kind: str = "default"
    factor: float | None = None
    # llama3
    low_freq_factor: float | None = None
    high_freq_factor: float | None = None
    original_max_position_embeddings: int | None = None
    # yarn
    beta_fast: float | None = None
    beta_slow: float | None = None
    mscale: float | None = None
    mscale_all_dim: float | None = None
    attention_factor: float | None = None
    truncate: bool = True

    def __post_init__(self) -> None:
        if self.kind not in ROPE_KINDS:
            raise ValueError(
                f"unsupported rope scaling {self.kind!r}; supported: {', '.join(ROPE_KINDS)}"
            )


def _yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def inv_freq(theta: float, dim: int, scaling: RopeScaling | None) -> tuple[np.ndarray, float]:
    """Inverse frequencies [dim // 2] (f32) and the factor applied to cos/sin, as transformers computes them."""
    exponents = np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim)
    # torch raises the Python-float theta to f32 exponents in double precision, then rounds.
    base = (np.float64(theta) ** exponents.astype(np.float64)).astype(np.float32)
    freqs = (1.0 / base).astype(np.float32)
    s = scaling or RopeScaling()
    if s.kind == "default":
        return freqs, 1.0
    if s.kind == "linear":
        return (freqs / np.float32(s.factor)).astype(np.float32), 1.0
    if s.kind == "llama3":
        return _llama3(freqs, s), 1.0
    return _yarn(theta, base, dim, s)


def _llama3(freqs: np.ndarray, s: RopeScaling) -> np.ndarray:
    factor, low, high = s.factor, s.low_freq_factor, s.high_freq_factor
    old_len = s.original_max_position_embeddings
    low_wavelen, high_wavelen = old_len / low, old_len / high
    # torch evaluates `scalar / tensor` as `tensor.reciprocal() * scalar`; so do we, bit for bit.
    wavelen = (1 / freqs) * np.float32(2 * math.pi)
    scaled = np.where(wavelen > low_wavelen, freqs / factor, freqs)
    smooth = ((1 / wavelen) * np.float32(old_len) - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return np.where(medium, smoothed, scaled).astype(np.float32)


def _yarn(theta: float, base: np.ndarray, dim: int, s: RopeScaling) -> tuple[np.ndarray, float]:
    factor = s.factor
    attention = s.attention_factor
    if attention is None:
        if s.mscale and s.mscale_all_dim:
            attention = _yarn_mscale(factor, s.mscale) / _yarn_mscale(factor, s.mscale_all_dim)
        else:
            attention = _yarn_mscale(factor)
    beta_fast, beta_slow = s.beta_fast or 32, s.beta_slow or 1

    def correction_dim(rotations: float) -> float:
        return (
            dim
            * math.log(s.original_max_position_embeddings / (rotations * 2 * math.pi))
            / (2 * math.log(theta))
        )

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if s.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = np.clip((np.arange(dim // 2, dtype=np.float32) - low) / (high - low), 0, 1)
    extrapolation = 1 - ramp
    freqs = (1.0 / (factor * base)) * (1 - extrapolation) + (1.0 / base) * extrapolation
    return freqs.astype(np.float32), float(attention)
