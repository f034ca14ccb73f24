"""A GGUF file opened for reading: metadata by key, tensors in [out, in] order, dequantized on demand."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

from ..errors import CheckpointError, UnsupportedModel

Q = gguf.GGMLQuantizationType

# Tensor storage types ferrumc dequantizes to f32 (through gguf's own block decoders).
SUPPORTED_TYPES: tuple[Q, ...] = (Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1)


@dataclass(frozen=True)
class GGUFTensor:
    """One tensor's header: its name, storage type and logical shape (outermost dim first)."""

    name: str
    type_name: str
    shape: tuple[int, ...]


class GGUFFile:
    """Metadata and tensors of one GGUF file; the tensor data stays memory-mapped until read."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            self._reader = gguf.GGUFReader(self.path)
        except (OSError, ValueError) as exc:
            raise CheckpointError(
                f"{self.path}: not a readable GGUF file ({exc}); re-download it"
            ) from exc
        self._tensors = {t.name: t for t in self._reader.tensors}

    # -- metadata --------------------------------------------------------------------------

    def has(self, key: str) -> bool:
        return key in self._reader.fields

    def get(self, key: str, default: object = None) -> object:
        """A metadata value as a Python scalar, str or list; `default` when the key is absent."""
        field = self._reader.fields.get(key)
        return default if field is None else field.contents()

    def require(self, key: str) -> object:
        if key not in self._reader.fields:
            raise CheckpointError(f"{self.path}: GGUF metadata key {key!r} is missing")
        return self.get(key)

    def get_int(self, key: str, default: int | None = None) -> int:
        """An integer value; the key is required when no default is given."""
        return int(self.require(key) if default is None else self.get(key, default))  # type: ignore[arg-type]

    def get_float(self, key: str, default: float | None = None) -> float:
        return float(self.require(key) if default is None else self.get(key, default))  # type: ignore[arg-type]

    def get_str(self, key: str, default: str | None = None) -> str:
        return str(self.require(key) if default is None else self.get(key, default))

    def string_array(self, key: str) -> list[str]:
        """A string array (token list, merges) decoded without gguf's per-item Python overhead."""
        field = self._reader.fields.get(key)
        if field is None:
            return []
        return [bytes(field.parts[i]).decode("utf-8", errors="replace") for i in field.data]

    def int_array(self, key: str) -> list[int]:
        field = self._reader.fields.get(key)
        if field is None:
            return []
        return [int(field.parts[i][0]) for i in field.data]

    # -- tensors ---------------------------------------------------------------------------

    def tensors(self) -> list[GGUFTensor]:
        return [self.header(name) for name in self._tensors]

    def __contains__(self, name: object) -> bool:
        return name in self._tensors

    def header(self, name: str) -> GGUFTensor:
        t = self._tensors[name]
        # GGUF lists dims innermost first (ggml's ne order); ours are outermost first.
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        return GGUFTensor(name, t.tensor_type.name, shape)

    def check_supported(self, name: str) -> None:
        t = self._tensors[name]
        if t.tensor_type not in SUPPORTED_TYPES:
            valid = ", ".join(q.name for q in SUPPORTED_TYPES)
            raise UnsupportedModel(
                f"{self.path}: tensor {name!r} is stored as {t.tensor_type.name}, which ferrumc "
                f"cannot read; supported GGUF tensor types: {valid}. Re-quantize the model to "
                "one of them (e.g. llama-quantize ... Q8_0)"
            )

    def loader(self, name: str) -> Callable[[], np.ndarray]:
        """A function reading the tensor as f32 in its logical shape; type-checked now, read later."""
        self.check_supported(name)
        tensor = self._tensors[name]
        shape = self.header(name).shape

        def load() -> np.ndarray:
            return dequantize(tensor.data, tensor.tensor_type).reshape(shape)

        return load

    def raw(self, name: str) -> tuple[np.ndarray, Q]:
        """The tensor's stored data (block bytes for quantized types, memory-mapped) and its type."""
        tensor = self._tensors[name]
        return tensor.data, tensor.tensor_type


def dequantize(data: np.ndarray, qtype: Q) -> np.ndarray:
    """Decode raw GGUF tensor data (typed array or block bytes) to a fresh f32 array."""
    if qtype == Q.F32:
        return np.array(data, dtype=np.float32)
    if qtype == Q.F16:
        return np.asarray(data).astype(np.float32)
    return np.ascontiguousarray(gguf.quants.dequantize(np.asarray(data), qtype), dtype=np.float32)
