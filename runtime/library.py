"""A compiled library loaded into TVM's Relax VM with its weights, called by entry-function name.

The metadata gives the weight order of the `params` tuple every entry function takes last, and
each entry's input and output names: a bundle's manifest supplies it (Manifest.library_metadata),
or else the `name.json` sidecar that `codegen.build` writes next to `name.so` is read.
Weights in host memory are wrapped, not copied, where TVM can use them in place (`host_tensor`).
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..codegen.tvm_import import tvm
from ..errors import BundleError, RequestError
from ..ir.types import DType, storage_shape


class Library:
    """One library in one VM on one device; the weights are uploaded once and shared by entries."""

    def __init__(
        self,
        path: Path,
        weights: Mapping[str, np.ndarray],
        device: str = "cpu",
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        path = Path(path)
        self.path = path
        if metadata is None:
            metadata = json.loads(path.with_suffix(".json").read_text())
        self.metadata = dict(metadata)
        self.device = tvm.device(device)
        self._on_host = on_host(self.device)
        use_all_cores()
        self.vm = tvm.relax.VirtualMachine(tvm.runtime.load_module(str(path)), self.device)
        self.params = [self._upload(spec, weights) for spec in self.metadata["weights"]]

    def _upload(self, spec: dict, weights: Mapping[str, np.ndarray]) -> tvm.runtime.Tensor:
        name = spec["name"]
        if name not in weights:
            raise BundleError(f"{self.path}: weight {name!r} required by the library is missing")
        dtype = DType(spec["dtype"])
        shape = list(storage_shape(dtype, tuple(spec["shape"])))  # u4 arrives as packed bytes
        array = np.ascontiguousarray(weights[name])
        if list(array.shape) != shape or array.dtype != dtype.numpy:
            raise BundleError(
                f"{self.path}: weight {name!r} is {array.dtype}{list(array.shape)}, "
                f"the library expects {dtype.numpy}{shape}"
            )
        return host_tensor(array, self.device)

    def entry(self, name: str) -> tvm.ffi.Function:
        return self.vm[name]

    def run(self, entry: str, inputs: Mapping[str, object]) -> dict[str, np.ndarray]:
        """Call `entry` with inputs by name (arrays, or runtime objects such as the KV cache)."""
        functions = self.metadata["functions"]
        if entry not in functions:
            raise RequestError(f"{self.path} has no entry {entry!r}; entries: {sorted(functions)}")
        names = functions[entry]["inputs"]
        if set(names) != set(inputs):
            raise RequestError(f"entry {entry!r} takes inputs {names}, got {sorted(inputs)}")
        args = [self._arg(inputs[n]) for n in names]
        result = self.vm[entry](*args, self.params)
        outputs = functions[entry]["outputs"]
        values = [result] if len(outputs) == 1 else list(result)
        return {n: self._result(v) for n, v in zip(outputs, values, strict=True)}

    # Per decode step these conversions cost as much as a few kernels when done through TVM's
    # Python copies (`tvm.runtime.tensor` ~35 us for one int32, `.numpy()` ~25 us for a
    # SmolLM2 logits row): on the CPU, arrays cross over DLPack instead (~1 us, plus a copy).
    def _arg(self, value: object) -> object:
        if not isinstance(value, np.ndarray):
            return value
        if self._on_host and value.size and value.dtype != DType.bf16.numpy:
            return tvm.runtime.from_dlpack(aligned_copy(value))
        return tvm.runtime.tensor(np.ascontiguousarray(value), self.device)

    def _result(self, value: tvm.runtime.Tensor) -> np.ndarray:
        if self._on_host and value.dtype != "bfloat16":  # numpy takes no bfloat16 over DLPack
            return np.from_dlpack(value).copy()  # a copy: never a view of VM-owned memory
        return value.numpy()


@functools.cache
def _host_device_type() -> int:
    return tvm.cpu().dlpack_device_type()  # tvm.cpu() alone costs ~5 us


def on_host(device: tvm.runtime.Device) -> bool:
    return device.dlpack_device_type() == _host_device_type()


def aligned_copy(array: np.ndarray) -> np.ndarray:
    """A writable, C-contiguous copy of `array` starting on a 64-byte boundary, which TVM
    takes in place over DLPack (numpy may place an empty one anywhere)."""
    raw = np.empty(array.nbytes + 64, np.uint8)
    start = -raw.ctypes.data % 64
    out = raw[start : start + array.nbytes].view(array.dtype).reshape(array.shape)
    out[...] = array
    return out


def host_tensor(array: np.ndarray, device: tvm.runtime.Device) -> tvm.runtime.Tensor:
    """`array` as a runtime tensor: on the CPU the same memory (a bundle's memory-mapped weights
    stay shared with the page cache), else or when TVM cannot take it in place, a copy.

    In place needs a writable (DLPack refuses read-only), C-contiguous, 64-byte aligned array
    (TVM's kernels assume that alignment). numpy exports no bfloat16 over DLPack: such weights
    are shared as uint16 and viewed as bfloat16.
    """
    in_place = (
        on_host(device)
        and array.flags.writeable
        and array.flags.c_contiguous
        and array.ctypes.data % 64 == 0
    )
    if not in_place:
        return tvm.runtime.tensor(array, device)
    if array.dtype == DType.bf16.numpy:
        shared = tvm.runtime.from_dlpack(array.view(np.uint16))
        return shared._create_view(array.shape, "bfloat16")
    return tvm.runtime.from_dlpack(array)


def use_all_cores() -> None:
    """Let TVM's thread pool run one worker per core this process may use.

    On x86 TVM halves the hardware thread count to skip hyper-threads, so a 2-vCPU machine
    gets one thread; the pool reads TVM_NUM_THREADS once, when the first parallel kernel runs.
    An explicit TVM_NUM_THREADS (e.g. a 1-thread benchmark) is left alone.
    """
    os.environ.setdefault("TVM_NUM_THREADS", str(len(os.sched_getaffinity(0))))
