"""Lazy reading of (possibly sharded) safetensors checkpoints: types from the headers, data on demand."""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open

from ..errors import CheckpointError, UnsupportedModel
from ..ir.types import DType

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"

# safetensors dtype names ferrumc can hold.
DTYPES = {
    "F32": DType.f32,
    "F16": DType.f16,
    "BF16": DType.bf16,
    "I32": DType.i32,
    "U32": DType.u32,
    "U8": DType.u8,
}


@dataclass(frozen=True)
class TensorInfo:
    """Where a tensor lives and what it is, as its file's header says (no data read)."""

    name: str
    file: Path
    dtype: str  # safetensors' own name ("BF16", "F32", ...), kept even when ferrumc lacks it
    shape: tuple[int, ...]

    def ferrum_dtype(self) -> DType:
        if self.dtype not in DTYPES:
            raise UnsupportedModel(
                f"tensor {self.name} in {self.file} has dtype {self.dtype}; "
                f"supported: {', '.join(DTYPES)}"
            )
        return DTYPES[self.dtype]


def _open(file: Path):  # -> safetensors' safe_open handle
    if not file.is_file():
        raise CheckpointError(f"missing checkpoint shard {file}; re-download the checkpoint")
    try:
        return safe_open(str(file), framework="numpy")
    except SafetensorError as e:
        raise CheckpointError(f"{file} is truncated or corrupt ({e}); re-download it") from None


def _shard_files(directory: Path) -> dict[Path, list[str] | None]:
    """The files to read and, for sharded checkpoints, the tensors the index places in each."""
    index = directory / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise CheckpointError(
                f"{index} is not a safetensors index (needs a 'weight_map' object): {e}"
            ) from None
        shards: dict[Path, list[str] | None] = {}
        for name, file in weight_map.items():
            shards.setdefault(directory / file, []).append(name)  # type: ignore[union-attr]
        return shards
    if (directory / SINGLE_FILE).is_file():
        return {directory / SINGLE_FILE: None}
    found = sorted(p.name for p in directory.glob("*.safetensors"))
    if len(found) == 1:
        return {directory / found[0]: None}
    hint = (
        f"found {', '.join(found)} but no {INDEX_FILE} to say which is which"
        if found
        else "convert .bin / .pth weights to safetensors first"
    )
    raise CheckpointError(f"no {SINGLE_FILE} or {INDEX_FILE} in {directory}; {hint}")


class SafetensorsCheckpoint:
    """Every tensor of a checkpoint directory by name; `read` loads one as a numpy array."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.tensors: dict[str, TensorInfo] = {}
        self._handles: dict[Path, object] = {}
        for file, listed in _shard_files(self.directory).items():
            handle = self._handle(file)
            keys = list(handle.keys())  # type: ignore[attr-defined]
            if listed is not None:
                absent = sorted(set(listed) - set(keys))
                if absent:
                    raise CheckpointError(
                        f"{self.directory / INDEX_FILE} places {absent[0]} in {file.name}, "
                        f"which does not hold it ({len(absent)} such tensors); re-download the checkpoint"
                    )
            for name in keys:
                if name in self.tensors:
                    raise CheckpointError(
                        f"tensor {name} is in both {self.tensors[name].file} and {file}"
                    )
                piece = handle.get_slice(name)  # type: ignore[attr-defined]
                self.tensors[name] = TensorInfo(
                    name, file, piece.get_dtype(), tuple(piece.get_shape())
                )

    def _handle(self, file: Path) -> object:
        if file not in self._handles:
            self._handles[file] = _open(file)
        return self._handles[file]

    def read(self, name: str) -> np.ndarray:
        info = self.tensors[name]
        info.ferrum_dtype()
        try:
            array = self._handle(info.file).get_tensor(name)  # type: ignore[attr-defined]
        except TypeError:
            # safetensors before 0.6 cannot give BF16 to numpy; map the raw bytes instead.
            array = read_raw(info)
        except SafetensorError as e:
            raise CheckpointError(
                f"could not read {name} from {info.file} ({e}); re-download it"
            ) from None
        assert array.shape == info.shape, f"{name}: header says {info.shape}, read {array.shape}"
        return array


def read_raw(info: TensorInfo) -> np.ndarray:
    """Memory-map one tensor's bytes straight from the file, using the header's offsets."""
    with open(info.file, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(header_len))
    start, end = header[info.name]["data_offsets"]
    dtype = info.ferrum_dtype().numpy
    count = (end - start) // dtype.itemsize
    data = np.memmap(
        info.file, dtype=dtype, mode="r", offset=8 + header_len + start, shape=(count,)
    )
    return data.reshape(info.shape)
